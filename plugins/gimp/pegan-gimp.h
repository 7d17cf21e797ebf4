/*
 * pegan-gimp.h: declarations shared by the source files of the pegan GIMP 2.10 plug-in.
 */

#ifndef PEGAN_GIMP_H
#define PEGAN_GIMP_H

#include <libgimp/gimp.h>

#include "pegan.h"

#define PLUG_IN_BINARY "pegan-gimp"
#define PLUG_IN_ROLE "pegan-gimp"

#define RETARGET_PROC "plug-in-pegan-singan-retarget"
#define TRAIN_PROC "plug-in-pegan-singan-train"
#define SAMPLE_PROC "plug-in-pegan-singan-sample"

/* Size of the model file name field of the saved dialog values, in bytes with the final NUL. */
#define MODEL_PATH_SIZE 4096

/* pegan_singan_generate rejects sides above 65536 pixels (pegan.h, PEGAN_STATUS_TOO_LARGE), so the
 * dialogs offer no more. Script-Fu callers may pass more and get that error. */
#define MAX_GENERATE_SIDE 65536

/* Maximum number of layers that one call of the sample procedure adds. */
#define MAX_SAMPLE_COUNT 100

#define PEGAN_GIMP_ERROR (pegan_gimp_error_quark ())

typedef enum
{
  PEGAN_GIMP_ERROR_FAILED,    /* pegan or GIMP failed, and the message names the step and cause */
  PEGAN_GIMP_ERROR_ARGUMENT,  /* a procedure argument is out of range */
  PEGAN_GIMP_ERROR_CANCELLED  /* the user stopped training */
} PeganGimpErrorCode;

/* Arguments of plug-in-pegan-singan-retarget, also stored with gimp_set_data for the next run. */
typedef struct
{
  gchar    model_file[MODEL_PATH_SIZE];
  gint32   width;
  gint32   height;
  guint32  seed;
  gboolean random_seed;   /* dialog only: draw a new seed every time the dialog opens */
  gint32   start_stage;
  gboolean new_image;     /* TRUE: a new image; FALSE: resize the layer in place */
} RetargetValues;

/* Arguments of plug-in-pegan-singan-train. */
typedef struct
{
  gchar    model_file[MODEL_PATH_SIZE];
  gchar    variant[32];
  gchar    preset[32];
  guint32  seed;
  gboolean random_seed;
  gint32   iterations;    /* iterations per stage; 0 keeps the preset's */
} TrainValues;

/* Arguments of plug-in-pegan-singan-sample. */
typedef struct
{
  gchar    model_file[MODEL_PATH_SIZE];
  gint32   count;
  guint32  seed;
  gboolean random_seed;
} SampleValues;

/* Summary of a model file, shown in the dialogs. */
typedef struct
{
  guint32  width;         /* trained width in pixels */
  guint32  height;
  guint32  num_stages;
  guint32  finished_stages;
  gboolean complete;
} ModelSummary;

/* Names accepted by the variant and preset arguments of the train procedure, NULL-terminated. */
extern const gchar *const pegan_gimp_variants[];
extern const gchar *const pegan_gimp_presets[];

GQuark pegan_gimp_error_quark (void);

/* pegan-model.c: loading, generating and training through the pegan C API. */

gboolean           pegan_gimp_is_known_name     (const gchar *const *names,
                                                 const gchar        *name);
PeganSinGanModel * pegan_gimp_load_model        (const gchar        *path,
                                                 ModelSummary       *summary,
                                                 GError            **error);
gboolean           pegan_gimp_generate          (const PeganSinGanModel     *model,
                                                 const PeganGenerateOptions *options,
                                                 guint32                     channels,
                                                 gfloat                    **out_pixels,
                                                 GError                    **error);
gboolean           pegan_gimp_train             (const TrainValues  *values,
                                                 const gfloat       *pixels,
                                                 guint32             width,
                                                 guint32             height,
                                                 guint32             channels,
                                                 gboolean            interactive,
                                                 GError            **error);

/* pegan-pixels.c: reading and writing drawables through GEGL buffers. */

guint32  pegan_gimp_color_channels      (gint32         drawable);
gfloat * pegan_gimp_read_color          (gint32         drawable,
                                         guint32       *width,
                                         guint32       *height,
                                         GError       **error);
gfloat * pegan_gimp_read_resized_alpha  (gint32         drawable,
                                         guint32        width,
                                         guint32        height,
                                         GError       **error);
/* Writes @color, with pegan_gimp_color_channels (@drawable) samples per pixel, and @alpha (or
 * opaque alpha when NULL) into the whole of @drawable, which is @width x @height pixels. */
void     pegan_gimp_write_pixels        (gint32         drawable,
                                         const gfloat  *color,
                                         const gfloat  *alpha,
                                         guint32        width,
                                         guint32        height);

/* pegan-dialogs.c: the dialogs of interactive runs. */

gboolean pegan_gimp_retarget_dialog (RetargetValues *values,
                                     gint32          drawable);
gboolean pegan_gimp_train_dialog    (TrainValues    *values,
                                     gint32          image);
gboolean pegan_gimp_sample_dialog   (SampleValues   *values);

/* Training progress window with a Stop button, used by interactive runs of the train procedure. */
typedef struct _TrainProgressWindow TrainProgressWindow;

TrainProgressWindow * pegan_gimp_train_window_new    (void);
void                  pegan_gimp_train_window_update (TrainProgressWindow      *window,
                                                      const PeganTrainProgress *report);
gboolean              pegan_gimp_train_window_stopped (TrainProgressWindow     *window);
void                  pegan_gimp_train_window_destroy (TrainProgressWindow     *window);

#endif /* PEGAN_GIMP_H */
