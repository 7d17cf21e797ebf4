/*
 * pegan-model.c: model loading, generation and training through the pegan C API.
 *
 * Generation and training run on a worker thread. The main thread, the only one that calls
 * libgimp and GTK, keeps GIMP's progress bar (or the training window) moving meanwhile, and a
 * Stop in the training window reaches pegan through the progress callback's return value.
 */

#include <string.h>

#include <json-glib/json-glib.h>
#include <libgimp/gimp.h>

#include "pegan-gimp.h"

/* How often the main thread refreshes the progress display while a worker runs. */
#define POLL_INTERVAL_US 50000

const gchar *const pegan_gimp_variants[] =
{
  "baseline", "interp-pad", "interp-pad-nobn", "csg", "spe4", "spe8", NULL
};

const gchar *const pegan_gimp_presets[] = { "paper", "fast", "tiny", NULL };

GQuark
pegan_gimp_error_quark (void)
{
  return g_quark_from_static_string ("pegan-gimp-error-quark");
}

gboolean
pegan_gimp_is_known_name (const gchar *const *names,
                          const gchar        *name)
{
  for (; *names; names++)
    if (strcmp (*names, name) == 0)
      return TRUE;

  return FALSE;
}

/* Sets @error from the last pegan error on this thread, prefixed with @prefix. */
static void
set_pegan_error (GError      **error,
                 PeganStatus   status,
                 const gchar  *prefix)
{
  g_set_error (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_FAILED, "%s: %s (%s)",
               prefix, pegan_last_error_message (), pegan_status_name (status));
}

static PeganContext *
new_context (GError **error)
{
  PeganContext *context = NULL;
  PeganStatus   status;

  if (pegan_abi_version () != PEGAN_ABI_VERSION)
    {
      g_set_error (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_FAILED,
                   "The plug-in was built for pegan ABI %d but the library has ABI %u: "
                   "rebuild the plug-in with make -C plugins/gimp install",
                   PEGAN_ABI_VERSION, (guint) pegan_abi_version ());
      return NULL;
    }

  /* The plug-in owns its process, so freed tensors may stay in the heap for the next ones. */
  pegan_retain_freed_memory ();

  /* NULL options: the CPU with one thread per core, no logging. */
  status = pegan_context_new (NULL, &context);
  if (status != PEGAN_STATUS_OK)
    {
      set_pegan_error (error, status, "Cannot start pegan");
      return NULL;
    }

  return context;
}

/* Fills @summary from pegan_singan_model_info_json. */
static gboolean
read_summary (const PeganSinGanModel *model,
              ModelSummary           *summary,
              GError                **error)
{
  JsonParser  *parser;
  JsonObject  *info;
  char        *json = NULL;
  PeganStatus  status;
  gboolean     parsed;

  status = pegan_singan_model_trained_size (model, &summary->width, &summary->height);
  if (status == PEGAN_STATUS_OK)
    status = pegan_singan_model_info_json (model, &json);
  if (status != PEGAN_STATUS_OK)
    {
      set_pegan_error (error, status, "Cannot describe the model");
      return FALSE;
    }

  parser = json_parser_new ();
  parsed = json_parser_load_from_data (parser, json, -1, error);
  pegan_string_free (json);
  if (! parsed || ! JSON_NODE_HOLDS_OBJECT (json_parser_get_root (parser)))
    {
      if (parsed)
        g_set_error_literal (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_FAILED,
                             "The model description is not a JSON object");
      g_object_unref (parser);
      return FALSE;
    }

  info = json_node_get_object (json_parser_get_root (parser));
  summary->num_stages = json_object_get_int_member_with_default (info, "num_stages", 0);
  summary->finished_stages = json_object_get_int_member_with_default (info, "finished_stages", 0);
  summary->complete = json_object_get_boolean_member_with_default (info, "complete", FALSE);
  g_object_unref (parser);

  return TRUE;
}

PeganSinGanModel *
pegan_gimp_load_model (const gchar   *path,
                       ModelSummary  *summary,
                       GError       **error)
{
  PeganContext     *context;
  PeganSinGanModel *model = NULL;
  PeganStatus       status;

  if (path == NULL || path[0] == '\0')
    {
      g_set_error_literal (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_ARGUMENT,
                           "No model file was given: choose a model file written by SinGAN train "
                           "or by the pegan command");
      return NULL;
    }

  if (! g_file_test (path, G_FILE_TEST_IS_REGULAR))
    {
      g_set_error (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_FAILED,
                   "Model file '%s' was not found: choose a model file written by SinGAN train "
                   "or by the pegan command",
                   gimp_filename_to_utf8 (path));
      return NULL;
    }

  context = new_context (error);
  if (! context)
    return NULL;

  /* The model keeps what it needs of the context, so the context can go right away. */
  status = pegan_singan_model_load (context, path, &model);
  pegan_context_free (context);

  if (status == PEGAN_STATUS_INVALID_MODEL)
    {
      g_set_error (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_FAILED,
                   "'%s' is not a pegan SinGAN model file: %s",
                   gimp_filename_to_utf8 (path), pegan_last_error_message ());
      return NULL;
    }
  if (status != PEGAN_STATUS_OK)
    {
      gchar *prefix = g_strdup_printf ("Cannot load model file '%s'", gimp_filename_to_utf8 (path));

      set_pegan_error (error, status, prefix);
      g_free (prefix);
      return NULL;
    }

  if (summary && ! read_summary (model, summary, error))
    {
      pegan_singan_model_free (model);
      return NULL;
    }

  return model;
}

/* State shared between the main thread and a generation worker. */
typedef struct
{
  const PeganSinGanModel *model;
  PeganGenerateOptions    options;
  PeganImage              image;
  size_t                  image_len;
  PeganStatus             status;
  gchar                  *message;   /* the pegan error, copied on the worker thread */
  gint                    done;      /* set with g_atomic_int_set when the worker ends */
} GenerateJob;

static gpointer
generate_worker (gpointer data)
{
  GenerateJob *job = data;

  job->status = pegan_singan_generate (job->model, &job->options, &job->image, job->image_len);
  /* The error message is thread-local: read it on this thread. */
  if (job->status != PEGAN_STATUS_OK)
    job->message = g_strdup (pegan_last_error_message ());

  g_atomic_int_set (&job->done, 1);
  return NULL;
}

gboolean
pegan_gimp_generate (const PeganSinGanModel     *model,
                     const PeganGenerateOptions *options,
                     guint32                     channels,
                     gfloat                    **out_pixels,
                     GError                    **error)
{
  GenerateJob job = { 0 };
  GThread    *thread;
  gsize       samples;
  gfloat     *pixels;

  *out_pixels = NULL;

  if (! g_size_checked_mul (&samples, options->width, options->height) ||
      ! g_size_checked_mul (&samples, samples, channels) ||
      ! g_size_checked_mul (&job.image_len, samples, sizeof (gfloat)))
    {
      g_set_error (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_FAILED,
                   "A %u x %u image is too large for this computer's address space",
                   options->width, options->height);
      return FALSE;
    }

  pixels = g_try_malloc (job.image_len);
  if (! pixels)
    {
      g_set_error (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_FAILED,
                   "Cannot allocate %" G_GSIZE_FORMAT " bytes for a %u x %u image: "
                   "request a smaller size",
                   job.image_len, options->width, options->height);
      return FALSE;
    }

  job.model = model;
  job.options = *options;
  job.image.width = options->width;
  job.image.height = options->height;
  job.image.channels = channels;
  job.image.row_stride = (size_t) options->width * channels * sizeof (gfloat);
  job.image.sample_type = PEGAN_SAMPLE_TYPE_F32;
  job.image.data = pixels;

  /* pegan reports no progress while it generates, so the bar only shows that work goes on. */
  thread = g_thread_new ("pegan-generate", generate_worker, &job);
  while (! g_atomic_int_get (&job.done))
    {
      gimp_progress_pulse ();
      g_usleep (POLL_INTERVAL_US);
    }
  g_thread_join (thread);

  if (job.status != PEGAN_STATUS_OK)
    {
      g_set_error (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_FAILED,
                   "Generating a %u x %u image failed: %s (%s)",
                   options->width, options->height, job.message, pegan_status_name (job.status));
      g_free (job.message);
      g_free (pixels);
      return FALSE;
    }

  *out_pixels = pixels;
  return TRUE;
}

/* State shared between the main thread and a training worker. */
typedef struct
{
  const PeganContext *context;
  PeganImage          image;
  size_t              image_len;
  PeganTrainOptions   options;

  /* Written by the worker. */
  PeganSinGanModel   *model;
  PeganStatus         status;
  gchar              *message;
  gint                done;

  /* The latest progress report, written by the progress callback on the worker thread. */
  GMutex              lock;
  PeganTrainProgress  latest;
  gboolean            has_report;

  /* Set by the main thread when the user stops training; returned by the progress callback. */
  gint                stop_requested;
} TrainJob;

/* pegan's progress callback, run on the worker thread after every iteration and stage. */
static int
train_progress (const PeganTrainProgress *progress,
                void                     *user_data)
{
  TrainJob *job = user_data;

  g_mutex_lock (&job->lock);
  job->latest = *progress;
  job->has_report = TRUE;
  g_mutex_unlock (&job->lock);

  return g_atomic_int_get (&job->stop_requested);
}

static gpointer
train_worker (gpointer data)
{
  TrainJob *job = data;

  job->status = pegan_singan_train (job->context, &job->image, job->image_len, &job->options,
                                    &job->model);
  if (job->status != PEGAN_STATUS_OK)
    job->message = g_strdup (pegan_last_error_message ());

  g_atomic_int_set (&job->done, 1);
  return NULL;
}

/* Returns the configuration request of pegan_singan_train for @values. */
static gchar *
train_config_json (const TrainValues *values)
{
  if (values->iterations > 0)
    return g_strdup_printf ("{\"variant\": \"%s\", \"preset\": \"%s\", "
                            "\"overrides\": {\"train\": {\"iters_per_scale\": %d}}}",
                            values->variant, values->preset, values->iterations);

  return g_strdup_printf ("{\"variant\": \"%s\", \"preset\": \"%s\"}",
                          values->variant, values->preset);
}

/* Shows @report in GIMP's progress bar, naming the stage when it changes. */
static void
show_train_progress (const PeganTrainProgress *report,
                     guint32                  *shown_stage)
{
  gdouble fraction = 0.0;

  if (report->num_stages > 0 && report->iterations_per_stage > 0)
    fraction = (report->stage + (gdouble) report->iteration / report->iterations_per_stage) /
               report->num_stages;

  if (report->stage != *shown_stage)
    {
      gimp_progress_set_text_printf ("Training SinGAN: stage %u of %u",
                                     report->stage + 1, report->num_stages);
      *shown_stage = report->stage;
    }
  gimp_progress_update (CLAMP (fraction, 0.0, 1.0));
}

/* Waits for the training worker and shows its progress in @window (interactive runs) or in GIMP's
 * progress bar. A press of the window's Stop button sets the job's stop request. */
static void
wait_for_training (TrainJob            *job,
                   TrainProgressWindow *window)
{
  guint32 shown_stage = G_MAXUINT32;

  while (! g_atomic_int_get (&job->done))
    {
      PeganTrainProgress report;
      gboolean           has_report;

      g_usleep (POLL_INTERVAL_US);

      g_mutex_lock (&job->lock);
      report = job->latest;
      has_report = job->has_report;
      g_mutex_unlock (&job->lock);

      if (window)
        {
          if (has_report)
            pegan_gimp_train_window_update (window, &report);
          if (pegan_gimp_train_window_stopped (window))
            g_atomic_int_set (&job->stop_requested, 1);
        }
      else if (has_report)
        {
          show_train_progress (&report, &shown_stage);
        }
    }
}

/* Saves the model of a finished or stopped training run, or explains why nothing was saved. */
static gboolean
save_trained_model (TrainJob          *job,
                    const TrainValues *values,
                    GError           **error)
{
  const gchar  *path_utf8 = gimp_filename_to_utf8 (values->model_file);
  ModelSummary  summary = { 0 };
  PeganStatus   status;

  if (! read_summary (job->model, &summary, error))
    return FALSE;

  if (job->status == PEGAN_STATUS_CANCELLED && summary.finished_stages == 0)
    {
      g_set_error (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_CANCELLED,
                   "Training was stopped before its first stage finished, "
                   "so no model file was written");
      return FALSE;
    }

  status = pegan_singan_model_save (job->model, values->model_file);
  if (status != PEGAN_STATUS_OK)
    {
      gchar *prefix = g_strdup_printf ("Cannot save the model to '%s'", path_utf8);

      set_pegan_error (error, status, prefix);
      g_free (prefix);
      return FALSE;
    }

  if (job->status == PEGAN_STATUS_CANCELLED)
    {
      g_set_error (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_CANCELLED,
                   "Training was stopped after %u of %u stages, and the finished stages were "
                   "saved to '%s'. The model generates images only after all stages are trained. "
                   "To continue training, run the pegan command's singan train --resume on the "
                   "same image",
                   summary.finished_stages, summary.num_stages, path_utf8);
      return FALSE;
    }

  return TRUE;
}

gboolean
pegan_gimp_train (const TrainValues  *values,
                  const gfloat       *pixels,
                  guint32             width,
                  guint32             height,
                  guint32             channels,
                  gboolean            interactive,
                  GError            **error)
{
  TrainJob             job = { 0 };
  TrainProgressWindow *window = NULL;
  PeganContext        *context;
  GThread             *thread;
  gchar               *config_json;
  gboolean             success = FALSE;

  context = new_context (error);
  if (! context)
    return FALSE;

  config_json = train_config_json (values);

  job.context = context;
  job.image.width = width;
  job.image.height = height;
  job.image.channels = channels;
  job.image.row_stride = (size_t) width * channels * sizeof (gfloat);
  job.image.sample_type = PEGAN_SAMPLE_TYPE_F32;
  job.image.data = (void *) pixels;   /* pegan_singan_train only reads it */
  job.image_len = job.image.row_stride * height;
  job.options.config_json = config_json;
  job.options.seed = values->seed;
  job.options.progress_callback = train_progress;
  job.options.progress_user_data = &job;
  g_mutex_init (&job.lock);

  /* Interactive runs show their own window because GIMP 2.10 ends a plug-in at once (SIGKILL)
   * when the user cancels its progress bar, which would lose the finished stages. */
  if (interactive)
    window = pegan_gimp_train_window_new ();
  else
    gimp_progress_init ("Training SinGAN");

  thread = g_thread_new ("pegan-train", train_worker, &job);
  wait_for_training (&job, window);
  g_thread_join (thread);

  if (window)
    pegan_gimp_train_window_destroy (window);

  if (job.status == PEGAN_STATUS_OK || job.status == PEGAN_STATUS_CANCELLED)
    {
      /* pegan_singan_train returns the model in both cases (finished stages only when cancelled). */
      success = save_trained_model (&job, values, error);
      pegan_singan_model_free (job.model);
    }
  else
    {
      g_set_error (error, PEGAN_GIMP_ERROR, PEGAN_GIMP_ERROR_FAILED,
                   "Training failed: %s (%s)", job.message, pegan_status_name (job.status));
    }

  g_free (job.message);
  g_mutex_clear (&job.lock);
  g_free (config_json);
  pegan_context_free (context);

  return success;
}
