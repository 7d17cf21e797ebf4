/*
 * pegan-pixels.c: reading and writing drawables through GEGL buffers.
 *
 * Pixels travel as 32-bit floats in the drawable's own colour space with its perceptual (gamma)
 * encoding, "R'G'B' float" or "Y' float", so 8-bit, 16-bit, 32-bit and linear-light images all
 * convert the same way and nothing is quantised on the way back. pegan receives the encoded
 * values that an 8-bit export of the layer would contain, at full precision.
 */

#include <math.h>
#include <string.h>

#include <libgimp/gimp.h>

#include "pegan-gimp.h"

/* Rows per gegl_buffer_set call, so writing never needs a second full-size buffer. */
#define WRITE_BAND_ROWS 64

guint32
pegan_gimp_color_channels (gint32 drawable)
{
  return gimp_drawable_is_gray (drawable) ? 1 : 3;
}

/* Returns the float format with @drawable's colour model, colour space and optionally alpha. */
static const Babl *
float_format (gint32   drawable,
              gboolean with_alpha)
{
  const gchar *name;

  if (gimp_drawable_is_gray (drawable))
    name = with_alpha ? "Y'A float" : "Y' float";
  else
    name = with_alpha ? "R'G'B'A float" : "R'G'B' float";

  return babl_format_with_space (name, gimp_drawable_get_format (drawable));
}

/* Allocates @width x @height x @channels floats, or sets @error when the size overflows or memory
 * runs out. */
static gfloat *
alloc_floats (guint32   width,
              guint32   height,
              guint32   channels,
              GError  **error)
{
  gsize   count;
  gsize   bytes;
  gfloat *pixels = NULL;

  if (g_size_checked_mul (&count, width, height) &&
      g_size_checked_mul (&count, count, channels) &&
      g_size_checked_mul (&bytes, count, sizeof (gfloat)))
    pixels = g_try_malloc (bytes);

  if (! pixels)
    g_set_error (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_FAILED,
                 "Cannot allocate memory for %u x %u pixels with %u channels",
                 width, height, channels);

  return pixels;
}

gfloat *
pegan_gimp_read_color (gint32    drawable,
                       guint32  *width,
                       guint32  *height,
                       GError  **error)
{
  GeglBuffer *buffer = gimp_drawable_get_buffer (drawable);
  gfloat     *pixels;

  *width = gegl_buffer_get_width (buffer);
  *height = gegl_buffer_get_height (buffer);

  pixels = alloc_floats (*width, *height, pegan_gimp_color_channels (drawable), error);
  if (pixels)
    gegl_buffer_get (buffer, GEGL_RECTANGLE (0, 0, *width, *height), 1.0,
                     float_format (drawable, FALSE), pixels,
                     GEGL_AUTO_ROWSTRIDE, GEGL_ABYSS_NONE);

  g_object_unref (buffer);
  return pixels;
}

/* Resizes the single-channel @source to @width x @height with bilinear interpolation between
 * pixel centres, clamping at the edges. Shrinking by more than half skips source pixels. */
static void
resize_bilinear (const gfloat *source,
                 guint32       source_width,
                 guint32       source_height,
                 gfloat       *target,
                 guint32       width,
                 guint32       height)
{
  gdouble scale_x = (gdouble) source_width / width;
  gdouble scale_y = (gdouble) source_height / height;
  guint32 x, y;

  for (y = 0; y < height; y++)
    {
      gdouble       sy  = CLAMP ((y + 0.5) * scale_y - 0.5, 0.0, source_height - 1.0);
      guint32       y0  = (guint32) floor (sy);
      guint32       y1  = MIN (y0 + 1, source_height - 1);
      gfloat        fy  = sy - y0;
      const gfloat *row0 = source + (gsize) y0 * source_width;
      const gfloat *row1 = source + (gsize) y1 * source_width;
      gfloat       *out = target + (gsize) y * width;

      for (x = 0; x < width; x++)
        {
          gdouble sx  = CLAMP ((x + 0.5) * scale_x - 0.5, 0.0, source_width - 1.0);
          guint32 x0  = (guint32) floor (sx);
          guint32 x1  = MIN (x0 + 1, source_width - 1);
          gfloat  fx  = sx - x0;
          gfloat  top = row0[x0] + (row0[x1] - row0[x0]) * fx;
          gfloat  bottom = row1[x0] + (row1[x1] - row1[x0]) * fx;

          out[x] = top + (bottom - top) * fy;
        }
    }
}

gfloat *
pegan_gimp_read_resized_alpha (gint32    drawable,
                               guint32   width,
                               guint32   height,
                               GError  **error)
{
  GeglBuffer *buffer = gimp_drawable_get_buffer (drawable);
  guint32     source_width = gegl_buffer_get_width (buffer);
  guint32     source_height = gegl_buffer_get_height (buffer);
  guint32     channels = pegan_gimp_color_channels (drawable) + 1;
  gfloat     *pixels;
  gfloat     *alpha = NULL;
  gfloat     *resized = NULL;
  gsize       i, count;

  pixels = alloc_floats (source_width, source_height, channels, error);
  if (pixels)
    alpha = alloc_floats (source_width, source_height, 1, error);
  if (alpha)
    resized = alloc_floats (width, height, 1, error);

  if (resized)
    {
      gegl_buffer_get (buffer, GEGL_RECTANGLE (0, 0, source_width, source_height), 1.0,
                       float_format (drawable, TRUE), pixels,
                       GEGL_AUTO_ROWSTRIDE, GEGL_ABYSS_NONE);

      count = (gsize) source_width * source_height;
      for (i = 0; i < count; i++)
        alpha[i] = pixels[i * channels + channels - 1];

      resize_bilinear (alpha, source_width, source_height, resized, width, height);
    }

  g_free (alpha);
  g_free (pixels);
  g_object_unref (buffer);
  return resized;
}

void
pegan_gimp_write_pixels (gint32        drawable,
                         const gfloat *color,
                         const gfloat *alpha,
                         guint32       width,
                         guint32       height)
{
  GeglBuffer *buffer = gimp_drawable_get_buffer (drawable);
  guint32     color_channels = pegan_gimp_color_channels (drawable);
  gboolean    has_alpha = gimp_drawable_has_alpha (drawable);
  guint32     band_start;
  gfloat     *band = NULL;

  if (has_alpha)
    band = g_new (gfloat, (gsize) width * MIN (height, WRITE_BAND_ROWS) * (color_channels + 1));

  for (band_start = 0; band_start < height; band_start += WRITE_BAND_ROWS)
    {
      guint32       rows = MIN (WRITE_BAND_ROWS, height - band_start);
      gsize         first = (gsize) band_start * width;
      const gfloat *source = color + first * color_channels;

      if (has_alpha)
        {
          /* Interleave the generated colour with the resized alpha, or opaque alpha without one. */
          gsize pixels = (gsize) rows * width;
          gsize i;

          for (i = 0; i < pixels; i++)
            {
              gfloat *out = band + i * (color_channels + 1);

              memcpy (out, source + i * color_channels, color_channels * sizeof (gfloat));
              out[color_channels] = alpha ? alpha[first + i] : 1.0f;
            }
          source = band;
        }

      gegl_buffer_set (buffer, GEGL_RECTANGLE (0, band_start, width, rows), 0,
                       float_format (drawable, has_alpha), source, GEGL_AUTO_ROWSTRIDE);
    }

  g_free (band);
  gegl_buffer_flush (buffer);
  g_object_unref (buffer);

  gimp_drawable_update (drawable, 0, 0, width, height);
}
