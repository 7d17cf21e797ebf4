/*
 * png-stats: prints facts about a PNG file that the plug-in tests check, as key=value pairs on one
 * line:
 *
 *   width=64 height=40 color_type=2 bit_depth=8 distinct=1234 hash=9f1c... left_alpha=0.0 right_alpha=255.0
 *
 * color_type and bit_depth come from the PNG header (0 grey, 2 RGB, 4 grey with alpha, 6 RGBA).
 * The other values come from the pixels as gdk-pixbuf decodes them, with 8 bits per sample and
 * grey as RGB. distinct counts distinct pixel values up to 1000, and hash is a 64-bit FNV-1a hash
 * of all samples. left_alpha and right_alpha are the mean alpha of the left and the right quarter
 * of the columns, or 255 without alpha.
 *
 * Build: cc -o png-stats png-stats.c $(pkg-config --cflags --libs gdk-pixbuf-2.0)
 */

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <gdk-pixbuf/gdk-pixbuf.h>

#define MAX_DISTINCT 1000

/* Reads the bit depth and colour type from the IHDR chunk, which every PNG file starts with. */
static gboolean
read_png_header (const char *path,
                 int        *bit_depth,
                 int        *color_type)
{
  static const unsigned char signature[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };
  unsigned char              header[26];
  FILE                      *file = fopen (path, "rb");
  size_t                     read = 0;

  if (file)
    {
      read = fread (header, 1, sizeof header, file);
      fclose (file);
    }
  if (read != sizeof header || memcmp (header, signature, 8) != 0 ||
      memcmp (header + 12, "IHDR", 4) != 0)
    return FALSE;

  *bit_depth = header[24];
  *color_type = header[25];
  return TRUE;
}

/* Returns the mean alpha of columns [first, last) or 255 for an image without alpha. */
static double
mean_alpha (const guchar *pixels,
            int           rowstride,
            int           channels,
            gboolean      has_alpha,
            int           height,
            int           first,
            int           last)
{
  double sum = 0.0;
  int    x, y;

  if (! has_alpha || last <= first)
    return 255.0;

  for (y = 0; y < height; y++)
    for (x = first; x < last; x++)
      sum += pixels[(size_t) y * rowstride + (size_t) x * channels + channels - 1];

  return sum / ((double) height * (last - first));
}

int
main (int   argc,
      char *argv[])
{
  GdkPixbuf    *pixbuf;
  GError       *error = NULL;
  const guchar *pixels;
  guint32       distinct[MAX_DISTINCT];
  int           n_distinct = 0;
  int           width, height, channels, rowstride, bit_depth, color_type;
  gboolean      has_alpha;
  uint64_t      hash = 14695981039346656037ULL;
  int           x, y, c, i;

  if (argc != 2)
    {
      fprintf (stderr, "usage: png-stats FILE.png\n");
      return 2;
    }

  if (! read_png_header (argv[1], &bit_depth, &color_type))
    {
      fprintf (stderr, "png-stats: %s is missing or not a PNG file\n", argv[1]);
      return 1;
    }

  pixbuf = gdk_pixbuf_new_from_file (argv[1], &error);
  if (! pixbuf)
    {
      fprintf (stderr, "png-stats: cannot decode %s: %s\n", argv[1], error->message);
      return 1;
    }

  width = gdk_pixbuf_get_width (pixbuf);
  height = gdk_pixbuf_get_height (pixbuf);
  channels = gdk_pixbuf_get_n_channels (pixbuf);
  rowstride = gdk_pixbuf_get_rowstride (pixbuf);
  has_alpha = gdk_pixbuf_get_has_alpha (pixbuf);
  pixels = gdk_pixbuf_read_pixels (pixbuf);

  for (y = 0; y < height; y++)
    for (x = 0; x < width; x++)
      {
        const guchar *pixel = pixels + (size_t) y * rowstride + (size_t) x * channels;
        guint32       value = 0;

        for (c = 0; c < channels; c++)
          {
            hash = (hash ^ pixel[c]) * 1099511628211ULL;
            value = (value << 8) | pixel[c];
          }

        for (i = 0; i < n_distinct && distinct[i] != value; i++)
          ;
        if (i == n_distinct && n_distinct < MAX_DISTINCT)
          distinct[n_distinct++] = value;
      }

  printf ("width=%d height=%d color_type=%d bit_depth=%d distinct=%d hash=%016llx "
          "left_alpha=%.1f right_alpha=%.1f\n",
          width, height, color_type, bit_depth, n_distinct, (unsigned long long) hash,
          mean_alpha (pixels, rowstride, channels, has_alpha, height, 0, width / 4),
          mean_alpha (pixels, rowstride, channels, has_alpha, height, width - width / 4, width));

  g_object_unref (pixbuf);
  return 0;
}
