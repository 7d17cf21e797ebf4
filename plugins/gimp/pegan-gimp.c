/*
 * pegan-gimp.c: GIMP 2.10 plug-in that trains, samples and retargets pegan SinGAN models.
 *
 * Procedures, under Filters > Generic > pegan and in the PDB:
 *   plug-in-pegan-singan-retarget  one image at a new width and height, as a new image or in place
 *   plug-in-pegan-singan-train     a model trained on the drawable, saved to a model file
 *   plug-in-pegan-singan-sample    random variations at the trained size, as new layers
 *
 * Every procedure opens a dialog when run interactively and takes all its settings as arguments
 * otherwise. Failures return GIMP_PDB_EXECUTION_ERROR (GIMP_PDB_CALLING_ERROR for an argument out
 * of range) with the message as a second, string return value, which Script-Fu reports and which
 * GIMP shows in an error message after a run started from a menu.
 */

#include <string.h>

#include <libgimp/gimp.h>
#include <libgimp/gimpui.h>

#include "pegan-gimp.h"

static void query (void);
static void run   (const gchar      *name,
                   gint              nparams,
                   const GimpParam  *param,
                   gint             *nreturn_vals,
                   GimpParam       **return_vals);

const GimpPlugInInfo PLUG_IN_INFO =
{
  NULL,  /* init_proc  */
  NULL,  /* quit_proc  */
  query, /* query_proc */
  run,   /* run_proc   */
};

MAIN ()

#define MENU_PATH "<Image>/Filters/Generic/pegan"

#define RUN_MODE_ARG \
  { GIMP_PDB_INT32, "run-mode", \
    "The run mode { RUN-INTERACTIVE (0), RUN-NONINTERACTIVE (1), RUN-WITH-LAST-VALS (2) }" }
#define MODEL_FILE_HELP \
  "SinGAN model file written by plug-in-pegan-singan-train or by the pegan command"

/* Argument counts, checked against nparams in run(). */
#define RETARGET_NPARAMS 9
#define TRAIN_NPARAMS 8
#define SAMPLE_NPARAMS 6

/* Return values of run(): the status plus at most three values, or the status and a message. */
static GimpParam return_values[4];

static void
query (void)
{
  static const GimpParamDef retarget_args[RETARGET_NPARAMS] =
  {
    RUN_MODE_ARG,
    { GIMP_PDB_IMAGE,    "image",       "Input image" },
    { GIMP_PDB_DRAWABLE, "drawable",    "Input drawable: the result takes its colour model, "
                                        "precision and alpha, and replaces it when new-image is 0" },
    { GIMP_PDB_STRING,   "model-file",  MODEL_FILE_HELP },
    { GIMP_PDB_INT32,    "width",       "Output width in pixels (1 to 65536)" },
    { GIMP_PDB_INT32,    "height",      "Output height in pixels (1 to 65536)" },
    { GIMP_PDB_INT32,    "seed",        "Seed of the random noise: the same seed, model and size "
                                        "give the same pixels" },
    { GIMP_PDB_INT32,    "start-stage", "First stage that gets random noise: 0 for a fully random "
                                        "image, higher to keep more of the training image's layout" },
    { GIMP_PDB_INT32,    "new-image",   "1 to create a new image, 0 to resize the layer in place" }
  };
  static const GimpParamDef retarget_returns[] =
  {
    { GIMP_PDB_IMAGE, "result-image", "The new image, or the input image when resized in place" },
    { GIMP_PDB_LAYER, "result-layer", "The layer with the generated pixels" }
  };

  static const GimpParamDef train_args[TRAIN_NPARAMS] =
  {
    RUN_MODE_ARG,
    { GIMP_PDB_IMAGE,    "image",      "Input image" },
    { GIMP_PDB_DRAWABLE, "drawable",   "Training image; its alpha channel is ignored" },
    { GIMP_PDB_STRING,   "model-file", "Model file to write; an existing file is replaced" },
    { GIMP_PDB_STRING,   "variant",    "Model variant: baseline, interp-pad, interp-pad-nobn, csg, "
                                       "spe4 or spe8" },
    { GIMP_PDB_STRING,   "preset",     "Training schedule: paper (2000 iterations per stage at the "
                                       "full image size, for a GPU), fast (minutes on a CPU, long "
                                       "side shrunk to 128 pixels) or tiny (seconds, 24 pixels)" },
    { GIMP_PDB_INT32,    "seed",       "Seed of the weight initialisation and the training noise" },
    { GIMP_PDB_INT32,    "iterations", "Training iterations per stage, or 0 for the preset's" }
  };

  static const GimpParamDef sample_args[SAMPLE_NPARAMS] =
  {
    RUN_MODE_ARG,
    { GIMP_PDB_IMAGE,    "image",      "Image that receives the new layers" },
    { GIMP_PDB_DRAWABLE, "drawable",   "The new layers go above this one, at its offsets" },
    { GIMP_PDB_STRING,   "model-file", MODEL_FILE_HELP },
    { GIMP_PDB_INT32,    "count",      "Number of layers to add (1 to 100)" },
    { GIMP_PDB_INT32,    "seed",       "Seed of the first layer; layer i uses seed + i" }
  };
  /* The array must not directly follow the status. On failure GIMP pads the status and the
   * message to the declared return values, and it takes an array's length from the value before
   * the array. Right after the status, that value would be the message, and passing the padded
   * array to Script-Fu then crashed Script-Fu (seen with GIMP 2.10.34). */
  static const GimpParamDef sample_returns[] =
  {
    { GIMP_PDB_LAYER,      "top-layer",  "The topmost layer added" },
    { GIMP_PDB_INT32,      "num-layers", "Number of layers added" },
    { GIMP_PDB_INT32ARRAY, "layer-ids",  "The layers added, top first" }
  };

  gimp_install_procedure (RETARGET_PROC,
                          "Generate an image at a new width and height with a SinGAN model",
                          "Generates one image of the requested size from a pegan SinGAN model, "
                          "keeping the structure of the image the model was trained on. The "
                          "result goes into a new image or replaces the layer, which is resized. "
                          "An alpha channel of the layer is resized bilinearly to the new size.",
                          "pegan developers", "MIT licence", "2026",
                          "SinGAN _Retarget...", "RGB*, GRAY*", GIMP_PLUGIN,
                          G_N_ELEMENTS (retarget_args), G_N_ELEMENTS (retarget_returns),
                          retarget_args, retarget_returns);
  gimp_plugin_menu_register (RETARGET_PROC, MENU_PATH);

  gimp_install_procedure (TRAIN_PROC,
                          "Train a SinGAN model on the layer and save it to a file",
                          "Trains a pegan SinGAN model on the drawable and saves it to a model "
                          "file for SinGAN Retarget and SinGAN Sample. In an interactive run, "
                          "Stop ends training after the current iteration and saves the stages "
                          "that finished.",
                          "pegan developers", "MIT licence", "2026",
                          "SinGAN _Train...", "RGB*, GRAY*", GIMP_PLUGIN,
                          G_N_ELEMENTS (train_args), 0, train_args, NULL);
  gimp_plugin_menu_register (TRAIN_PROC, MENU_PATH);

  gimp_install_procedure (SAMPLE_PROC,
                          "Add random variations from a SinGAN model as new layers",
                          "Generates count random images at the model's trained size from a "
                          "pegan SinGAN model and adds each as a new layer above the drawable.",
                          "pegan developers", "MIT licence", "2026",
                          "SinGAN _Sample...", "RGB*, GRAY*", GIMP_PLUGIN,
                          G_N_ELEMENTS (sample_args), G_N_ELEMENTS (sample_returns),
                          sample_args, sample_returns);
  gimp_plugin_menu_register (SAMPLE_PROC, MENU_PATH);
}

/* Copies a string argument into a fixed-size field, rejecting NULL and values that do not fit. */
static gboolean
copy_string_arg (gchar       *field,
                 gsize        size,
                 const gchar *value,
                 const gchar *name,
                 GError     **error)
{
  if (value == NULL || g_strlcpy (field, value, size) >= size)
    {
      g_set_error (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_ARGUMENT,
                   "%s must be a string of at most %" G_GSIZE_FORMAT " bytes",
                   name, size - 1);
      return FALSE;
    }

  return TRUE;
}

/* Rejects drawables that the procedures cannot read or write. */
static gboolean
check_drawable (gint32    drawable,
                GError  **error)
{
  if (! gimp_item_is_valid (drawable) || ! gimp_item_is_drawable (drawable))
    {
      g_set_error (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_ARGUMENT,
                   "Drawable %d does not exist", drawable);
      return FALSE;
    }
  if (gimp_drawable_is_indexed (drawable))
    {
      g_set_error_literal (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_ARGUMENT,
                           "Indexed images are not supported: convert the image with "
                           "Image > Mode > RGB or Grayscale first");
      return FALSE;
    }
  if (gimp_item_is_group (drawable))
    {
      g_set_error_literal (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_ARGUMENT,
                           "A layer group has no pixels of its own: select a layer in it");
      return FALSE;
    }

  return TRUE;
}

static gboolean
retarget_values_from_args (RetargetValues  *values,
                           const GimpParam *param,
                           GError         **error)
{
  if (! copy_string_arg (values->model_file, sizeof values->model_file,
                         param[3].data.d_string, "model-file", error))
    return FALSE;

  values->width = param[4].data.d_int32;
  values->height = param[5].data.d_int32;
  values->seed = (guint32) param[6].data.d_int32;
  values->start_stage = param[7].data.d_int32;
  values->new_image = param[8].data.d_int32 != 0;

  if (values->width < 1 || values->height < 1)
    {
      g_set_error (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_ARGUMENT,
                   "width and height must be at least 1 pixel, got %d x %d",
                   values->width, values->height);
      return FALSE;
    }
  if (values->start_stage < 0)
    {
      g_set_error (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_ARGUMENT,
                   "start-stage must be 0 or more, got %d", values->start_stage);
      return FALSE;
    }

  return TRUE;
}

static gboolean
train_values_from_args (TrainValues     *values,
                        const GimpParam *param,
                        GError         **error)
{
  if (! copy_string_arg (values->model_file, sizeof values->model_file,
                         param[3].data.d_string, "model-file", error) ||
      ! copy_string_arg (values->variant, sizeof values->variant,
                         param[4].data.d_string, "variant", error) ||
      ! copy_string_arg (values->preset, sizeof values->preset,
                         param[5].data.d_string, "preset", error))
    return FALSE;

  values->seed = (guint32) param[6].data.d_int32;
  values->iterations = param[7].data.d_int32;

  if (values->iterations < 0)
    {
      g_set_error (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_ARGUMENT,
                   "iterations must be 0 (the preset's) or more, got %d", values->iterations);
      return FALSE;
    }

  return TRUE;
}

static gboolean
sample_values_from_args (SampleValues    *values,
                         const GimpParam *param,
                         GError         **error)
{
  if (! copy_string_arg (values->model_file, sizeof values->model_file,
                         param[3].data.d_string, "model-file", error))
    return FALSE;

  values->count = param[4].data.d_int32;
  values->seed = (guint32) param[5].data.d_int32;

  if (values->count < 1 || values->count > MAX_SAMPLE_COUNT)
    {
      g_set_error (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_ARGUMENT,
                   "count must be between 1 and %d, got %d", MAX_SAMPLE_COUNT, values->count);
      return FALSE;
    }

  return TRUE;
}

/* Checks the variant and preset names, which the dialog cannot get wrong but Script-Fu can. */
static gboolean
check_train_names (const TrainValues *values,
                   GError           **error)
{
  if (! pegan_gimp_is_known_name (pegan_gimp_variants, values->variant))
    {
      g_set_error (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_ARGUMENT,
                   "Unknown variant '%s': use baseline, interp-pad, interp-pad-nobn, csg, "
                   "spe4 or spe8", values->variant);
      return FALSE;
    }
  if (! pegan_gimp_is_known_name (pegan_gimp_presets, values->preset))
    {
      g_set_error (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_ARGUMENT,
                   "Unknown preset '%s': use paper, fast or tiny", values->preset);
      return FALSE;
    }
  if (values->model_file[0] == '\0')
    {
      g_set_error_literal (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_ARGUMENT,
                           "No model file was given: name the file to write the model to");
      return FALSE;
    }

  return TRUE;
}

/* Returns the colour channels of the layers of @image: 1 for grayscale, 3 for RGB. The drawable can
 * be a channel or a layer mask, which are grayscale in any image, so generation and the layers it
 * fills go by the image. */
static guint32
image_color_channels (gint32 image)
{
  return gimp_image_base_type (image) == GIMP_GRAY ? 1 : 3;
}

/* Returns the layer type of @base_type, with an alpha channel when @with_alpha is set. */
static GimpImageType
layer_type (GimpImageBaseType base_type,
            gboolean          with_alpha)
{
  if (base_type == GIMP_GRAY)
    return with_alpha ? GIMP_GRAYA_IMAGE : GIMP_GRAY_IMAGE;

  return with_alpha ? GIMP_RGBA_IMAGE : GIMP_RGB_IMAGE;
}

/* Creates an image of @width x @height with @source_image's colour model, precision and colour
 * profile, holding one layer shaped like @drawable; returns the layer. */
static gint32
new_image_like (gint32   source_image,
                gint32   drawable,
                guint32  width,
                guint32  height,
                guint32  seed,
                gint32  *out_image)
{
  GimpImageBaseType  base_type = gimp_image_base_type (source_image);
  GimpColorProfile  *profile;
  gint32             image;
  gint32             layer;
  gchar             *name;

  image = gimp_image_new_with_precision (width, height, base_type,
                                         gimp_image_get_precision (source_image));
  gimp_image_undo_disable (image);

  /* The generated values are in the source's colour space, so the new image needs its profile. */
  profile = gimp_image_get_color_profile (source_image);
  if (profile)
    {
      gimp_image_set_color_profile (image, profile);
      g_object_unref (profile);
    }

  name = g_strdup_printf ("SinGAN retarget (seed %u)", seed);
  layer = gimp_layer_new (image, name, width, height,
                          layer_type (base_type, gimp_drawable_has_alpha (drawable)),
                          100.0, GIMP_LAYER_MODE_NORMAL);
  g_free (name);
  gimp_image_insert_layer (image, layer, 0, 0);

  *out_image = image;
  return layer;
}

/* Resizes @layer to @width x @height, keeping its offsets. A layer that covered the whole image
 * from its top-left corner takes the canvas along, so that the result stays fully visible. */
static void
resize_layer_in_place (gint32  image,
                       gint32  layer,
                       guint32 width,
                       guint32 height)
{
  gint     offset_x, offset_y;
  gboolean covers_image;

  gimp_drawable_offsets (layer, &offset_x, &offset_y);
  covers_image = offset_x == 0 && offset_y == 0 &&
                 gimp_drawable_width (layer) == gimp_image_width (image) &&
                 gimp_drawable_height (layer) == gimp_image_height (image);

  gimp_layer_resize (layer, width, height, 0, 0);
  if (covers_image)
    gimp_image_resize (image, width, height, 0, 0);
}

static gboolean
run_retarget (GimpRunMode           run_mode,
              gint32                image,
              gint32                drawable,
              const RetargetValues *values,
              gint32               *out_image,
              gint32               *out_layer,
              GError              **error)
{
  PeganSinGanModel     *model;
  PeganGenerateOptions  options = { 0 };
  guint32               channels = image_color_channels (image);
  gfloat               *color = NULL;
  gfloat               *alpha = NULL;
  gboolean              success;

  if (! values->new_image && ! gimp_item_is_layer (drawable))
    {
      g_set_error_literal (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_ARGUMENT,
                           "Only a layer can be resized in place: select a layer, "
                           "or create a new image");
      return FALSE;
    }

  gimp_progress_init ("SinGAN retarget");

  model = pegan_gimp_load_model (values->model_file, NULL, error);
  if (! model)
    return FALSE;

  options.width = values->width;
  options.height = values->height;
  options.seed = values->seed;
  options.start_stage = values->start_stage;
  options.noise_mode = PEGAN_NOISE_MODE_RANDOM;

  /* Generate before touching the image, so that a failure leaves it unchanged. */
  success = pegan_gimp_generate (model, &options, channels, &color, error);
  pegan_singan_model_free (model);

  if (success && gimp_drawable_has_alpha (drawable))
    {
      alpha = pegan_gimp_read_resized_alpha (drawable, values->width, values->height, error);
      success = alpha != NULL;
    }

  if (success && values->new_image)
    {
      *out_layer = new_image_like (image, drawable, values->width, values->height, values->seed,
                                   out_image);
      pegan_gimp_write_pixels (*out_layer, color, alpha, values->width, values->height);
      gimp_image_undo_enable (*out_image);

      if (run_mode == GIMP_RUN_INTERACTIVE)
        gimp_display_new (*out_image);
    }
  else if (success)
    {
      gimp_image_undo_group_start (image);
      resize_layer_in_place (image, drawable, values->width, values->height);
      pegan_gimp_write_pixels (drawable, color, alpha, values->width, values->height);
      gimp_image_undo_group_end (image);

      *out_image = image;
      *out_layer = drawable;
    }

  g_free (alpha);
  g_free (color);
  return success;
}

static gboolean
run_train (GimpRunMode        run_mode,
           gint32             drawable,
           const TrainValues *values,
           GError           **error)
{
  guint32   width, height;
  gfloat   *pixels;
  gboolean  success;

  if (! check_train_names (values, error))
    return FALSE;

  pixels = pegan_gimp_read_color (drawable, &width, &height, error);
  if (! pixels)
    return FALSE;

  success = pegan_gimp_train (values, pixels, width, height,
                              pegan_gimp_color_channels (drawable),
                              run_mode == GIMP_RUN_INTERACTIVE, error);
  g_free (pixels);

  if (success && run_mode == GIMP_RUN_INTERACTIVE)
    g_message ("The SinGAN model was saved to '%s'.", gimp_filename_to_utf8 (values->model_file));

  return success;
}

/* Removes the layers that a failed sample run had added so far. */
static void
remove_layers (gint32        image,
               const gint32 *layers,
               gint          count)
{
  gint i;

  for (i = 0; i < count; i++)
    gimp_image_remove_layer (image, layers[i]);
}

static gboolean
run_sample (gint32              image,
            gint32              drawable,
            const SampleValues *values,
            gint32            **out_layers,
            GError            **error)
{
  GimpImageBaseType  base_type = gimp_image_base_type (image);
  PeganSinGanModel  *model;
  ModelSummary       summary;
  gint32            *layers;
  gint               offset_x, offset_y;
  gint               i;
  gboolean           success = TRUE;

  gimp_progress_init ("SinGAN sample");

  model = pegan_gimp_load_model (values->model_file, &summary, error);
  if (! model)
    return FALSE;

  gimp_drawable_offsets (drawable, &offset_x, &offset_y);
  layers = g_new0 (gint32, values->count);

  gimp_image_undo_group_start (image);

  for (i = 0; i < values->count && success; i++)
    {
      PeganGenerateOptions options = { 0 };
      gfloat              *color;
      gchar               *name;
      gint32               layer;
      guint32              seed = values->seed + (guint32) i;

      gimp_progress_set_text_printf ("SinGAN sample %d of %d", i + 1, values->count);

      options.width = summary.width;
      options.height = summary.height;
      options.seed = seed;
      options.noise_mode = PEGAN_NOISE_MODE_RANDOM;

      success = pegan_gimp_generate (model, &options, image_color_channels (image), &color, error);
      if (! success)
        {
          remove_layers (image, layers, i);
          break;
        }

      name = g_strdup_printf ("SinGAN sample (seed %u)", seed);
      layer = gimp_layer_new (image, name, summary.width, summary.height,
                              layer_type (base_type, FALSE), 100.0, GIMP_LAYER_MODE_NORMAL);
      g_free (name);

      /* Parent 0 and position -1 put the layer above the active layer, in its group. */
      gimp_image_insert_layer (image, layer, 0, -1);
      gimp_layer_set_offsets (layer, offset_x, offset_y);
      pegan_gimp_write_pixels (layer, color, NULL, summary.width, summary.height);
      g_free (color);

      layers[i] = layer;
    }

  gimp_image_undo_group_end (image);
  pegan_singan_model_free (model);

  if (! success)
    {
      g_free (layers);
      return FALSE;
    }

  /* Report the layers top first, the order in which they are stacked. */
  for (i = 0; i < values->count / 2; i++)
    {
      gint32 swap = layers[i];

      layers[i] = layers[values->count - 1 - i];
      layers[values->count - 1 - i] = swap;
    }

  *out_layers = layers;
  return TRUE;
}

/* Runs the dialog of an interactive run or restores the last values; FALSE when cancelled. */
static gboolean
get_interactive_values (const gchar *name,
                        GimpRunMode  run_mode,
                        gint32       image,
                        gint32       drawable,
                        gpointer     values)
{
  if (strcmp (name, RETARGET_PROC) == 0)
    {
      /* Before the first run, propose the drawable's own size. */
      RetargetValues *retarget = values;

      retarget->width = gimp_drawable_width (drawable);
      retarget->height = gimp_drawable_height (drawable);
    }

  gimp_get_data (name, values);
  if (run_mode != GIMP_RUN_INTERACTIVE)
    return TRUE;

  gimp_ui_init (PLUG_IN_BINARY, FALSE);

  if (strcmp (name, RETARGET_PROC) == 0)
    return pegan_gimp_retarget_dialog (values, drawable);
  if (strcmp (name, TRAIN_PROC) == 0)
    return pegan_gimp_train_dialog (values, image);

  return pegan_gimp_sample_dialog (values);
}

/* Fills the error return values with @error's message and returns its status.
 *
 * The plug-in shows no message box itself: GIMP 2.10 runs a plug-in started from a menu
 * asynchronously and shows the returned message as "Execution error for '...'", and a calling
 * script receives it as the procedure's error. A g_message here would show it twice. */
static GimpPDBStatusType
set_error_return (const GError *error,
                  gint         *nreturn_vals)
{
  /* libgimp sends the return values after run() returns, so the message must outlive it. */
  static gchar     *message = NULL;
  GimpPDBStatusType status = GIMP_PDB_EXECUTION_ERROR;

  if (error->domain == PEGAN_GIMP_ERROR && error->code == PEGAN_GIMP_ERROR_ARGUMENT)
    status = GIMP_PDB_CALLING_ERROR;

  g_free (message);
  message = g_strdup (error->message);

  return_values[1].type = GIMP_PDB_STRING;
  return_values[1].data.d_string = message;
  *nreturn_vals = 2;

  return status;
}

static void
run (const gchar      *name,
     gint              nparams,
     const GimpParam  *param,
     gint             *nreturn_vals,
     GimpParam       **return_vals)
{
  GimpRunMode        run_mode = param[0].data.d_int32;
  gint32             image = param[1].data.d_image;
  gint32             drawable = param[2].data.d_drawable;
  GimpPDBStatusType  status = GIMP_PDB_SUCCESS;
  GError            *error = NULL;
  RetargetValues     retarget = { "", 256, 256, 0, TRUE, 0, TRUE };
  TrainValues        train = { "", "csg", "fast", 0, FALSE, 0 };
  SampleValues       sample = { "", 4, 0, TRUE };
  gpointer           values;
  gsize              values_size;
  gint               expected_nparams;

  *nreturn_vals = 1;
  *return_vals = return_values;
  return_values[0].type = GIMP_PDB_STATUS;

  gegl_init (NULL, NULL);

  if (strcmp (name, RETARGET_PROC) == 0)
    {
      values = &retarget;
      values_size = sizeof retarget;
      expected_nparams = RETARGET_NPARAMS;
    }
  else if (strcmp (name, TRAIN_PROC) == 0)
    {
      values = &train;
      values_size = sizeof train;
      expected_nparams = TRAIN_NPARAMS;
    }
  else if (strcmp (name, SAMPLE_PROC) == 0)
    {
      values = &sample;
      values_size = sizeof sample;
      expected_nparams = SAMPLE_NPARAMS;
    }
  else
    {
      return_values[0].data.d_status = GIMP_PDB_CALLING_ERROR;
      return;
    }

  if (run_mode == GIMP_RUN_NONINTERACTIVE && nparams != expected_nparams)
    {
      g_set_error (&error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_ARGUMENT,
                   "%s takes %d arguments, got %d", name, expected_nparams, nparams);
    }
  else if (! check_drawable (drawable, &error))
    {
      /* error is set */
    }
  else if (run_mode == GIMP_RUN_NONINTERACTIVE)
    {
      /* Each of these sets error when it returns FALSE. */
      if (values == &retarget)
        retarget_values_from_args (&retarget, param, &error);
      else if (values == &train)
        train_values_from_args (&train, param, &error);
      else
        sample_values_from_args (&sample, param, &error);
    }
  else if (! get_interactive_values (name, run_mode, image, drawable, values))
    {
      status = GIMP_PDB_CANCEL;
    }

  if (error == NULL && status == GIMP_PDB_SUCCESS)
    {
      if (values == &retarget)
        {
          gint32 result_image = -1;
          gint32 result_layer = -1;

          if (run_retarget (run_mode, image, drawable, &retarget,
                            &result_image, &result_layer, &error))
            {
              return_values[1].type = GIMP_PDB_IMAGE;
              return_values[1].data.d_image = result_image;
              return_values[2].type = GIMP_PDB_LAYER;
              return_values[2].data.d_layer = result_layer;
              *nreturn_vals = 3;
            }
        }
      else if (values == &train)
        {
          run_train (run_mode, drawable, &train, &error);
        }
      else
        {
          /* libgimp sends the array after run() returns; the process ends soon after. */
          static gint32 *layers = NULL;

          if (run_sample (image, drawable, &sample, &layers, &error))
            {
              return_values[1].type = GIMP_PDB_LAYER;
              return_values[1].data.d_layer = layers[0];
              return_values[2].type = GIMP_PDB_INT32;
              return_values[2].data.d_int32 = sample.count;
              return_values[3].type = GIMP_PDB_INT32ARRAY;
              return_values[3].data.d_int32array = layers;
              *nreturn_vals = 4;
            }
        }

      gimp_progress_end ();

      if (error == NULL)
        {
          if (run_mode != GIMP_RUN_NONINTERACTIVE)
            gimp_displays_flush ();
          if (run_mode == GIMP_RUN_INTERACTIVE)
            gimp_set_data (name, values, values_size);
        }
    }

  if (error != NULL)
    {
      status = set_error_return (error, nreturn_vals);
      g_error_free (error);
    }

  return_values[0].data.d_status = status;
}
