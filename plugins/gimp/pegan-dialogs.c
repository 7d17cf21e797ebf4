/*
 * pegan-dialogs.c: the dialogs of interactive runs and the training progress window.
 *
 * Each dialog edits a copy of the procedure's values and writes them back only on OK.
 */

#include <string.h>

#include <libgimp/gimp.h>
#include <libgimp/gimpui.h>

#include "pegan-gimp.h"

/* Labels of the variant and preset combo boxes, in the order of pegan_gimp_variants and
 * pegan_gimp_presets. */
static const gchar *variant_labels[] =
{
  "baseline: SinGAN with zero padding",
  "interp-pad: padding-free, bicubic interpolation",
  "interp-pad-nobn: as interp-pad, no batch norm in D",
  "csg: Cartesian spatial grid",
  "spe4: sinusoidal encoding, 8 channels",
  "spe8: sinusoidal encoding, 16 channels",
};

static const gchar *preset_labels[] =
{
  "paper: 2000 iterations per stage, for a GPU",
  "fast: minutes on a CPU, 128-pixel long side",
  "tiny: seconds, 24-pixel long side (tests)",
};

/* Widgets of the model file row shared by the retarget and sample dialogs. */
typedef struct
{
  GtkWidget    *chooser;
  GtkWidget    *info;          /* trained size and stages, or why the file cannot be used */
  GtkWidget    *start_stage;   /* retarget only: its upper bound follows the model */
  GtkWidget    *width;         /* retarget only: set by the "Use trained size" button */
  GtkWidget    *height;
  ModelSummary  summary;
  gboolean      loaded;
} ModelRow;

static GtkWidget *
new_dialog (const gchar *title,
            const gchar *help_id)
{
  GtkWidget *dialog;

  dialog = gimp_dialog_new (title, PLUG_IN_ROLE, NULL, 0,
                            gimp_standard_help_func, help_id,
                            "_Cancel", GTK_RESPONSE_CANCEL,
                            "_OK",     GTK_RESPONSE_OK,
                            NULL);
  gtk_dialog_set_alternative_button_order (GTK_DIALOG (dialog),
                                           GTK_RESPONSE_OK, GTK_RESPONSE_CANCEL, -1);
  gtk_dialog_set_default_response (GTK_DIALOG (dialog), GTK_RESPONSE_OK);
  gimp_window_set_transient (GTK_WINDOW (dialog));

  return dialog;
}

/* Adds a table with @rows rows to @dialog's content area and returns it. */
static GtkWidget *
new_table (GtkWidget *dialog,
           gint       rows)
{
  GtkWidget *table = gtk_table_new (rows, 3, FALSE);

  gtk_container_set_border_width (GTK_CONTAINER (table), 12);
  gtk_table_set_row_spacings (GTK_TABLE (table), 6);
  gtk_table_set_col_spacings (GTK_TABLE (table), 6);
  gtk_box_pack_start (GTK_BOX (gtk_dialog_get_content_area (GTK_DIALOG (dialog))),
                      table, TRUE, TRUE, 0);
  gtk_widget_show (table);

  return table;
}

static GtkWidget *
new_int_spin (gint value,
              gint lower,
              gint upper)
{
  GtkObject *adjustment = gtk_adjustment_new (value, lower, upper, 1, 10, 0);
  GtkWidget *spin = gimp_spin_button_new (GTK_ADJUSTMENT (adjustment), 1.0, 0);

  gtk_spin_button_set_numeric (GTK_SPIN_BUTTON (spin), TRUE);
  gtk_entry_set_width_chars (GTK_ENTRY (spin), 7);
  gtk_entry_set_activates_default (GTK_ENTRY (spin), TRUE);
  return spin;
}

static gint
spin_value (GtkWidget *spin)
{
  return gtk_spin_button_get_value_as_int (GTK_SPIN_BUTTON (spin));
}

/* Adds the file filters for pegan model files to @chooser. */
static void
add_model_filters (GtkFileChooser *chooser)
{
  GtkFileFilter *models = gtk_file_filter_new ();
  GtkFileFilter *all = gtk_file_filter_new ();

  gtk_file_filter_set_name (models, "pegan models (*.pegan, *.safetensors)");
  gtk_file_filter_add_pattern (models, "*.pegan");
  gtk_file_filter_add_pattern (models, "*.safetensors");
  gtk_file_chooser_add_filter (chooser, models);

  gtk_file_filter_set_name (all, "All files");
  gtk_file_filter_add_pattern (all, "*");
  gtk_file_chooser_add_filter (chooser, all);
}

/* Loads the chosen model and shows its size and stages, or the reason it cannot be used. */
static void
model_row_update (ModelRow *row)
{
  gchar            *path = gtk_file_chooser_get_filename (GTK_FILE_CHOOSER (row->chooser));
  PeganSinGanModel *model = NULL;
  GError           *error = NULL;
  gchar            *text;

  row->loaded = FALSE;

  if (path)
    model = pegan_gimp_load_model (path, &row->summary, &error);

  if (! path)
    {
      text = g_strdup ("Choose a model file written by SinGAN Train or by the pegan command.");
    }
  else if (! model)
    {
      text = g_strdup (error->message);
      g_clear_error (&error);
    }
  else if (! row->summary.complete)
    {
      text = g_strdup_printf ("Training of this model stopped after %u of %u stages, so it cannot "
                              "generate images yet.",
                              row->summary.finished_stages, row->summary.num_stages);
    }
  else
    {
      text = g_strdup_printf ("Trained size %u × %u pixels, %u stages.",
                              row->summary.width, row->summary.height, row->summary.num_stages);
      row->loaded = TRUE;
    }

  gtk_label_set_text (GTK_LABEL (row->info), text);
  g_free (text);
  g_free (path);

  if (row->start_stage && row->loaded)
    gtk_spin_button_set_range (GTK_SPIN_BUTTON (row->start_stage),
                               0, MAX (row->summary.num_stages, 1) - 1);

  if (model)
    pegan_singan_model_free (model);
}

static void
model_file_set (GtkFileChooserButton *chooser,
                ModelRow             *row)
{
  model_row_update (row);
}

/* Adds the model file chooser and its information label at @row_index and @row_index + 1. */
static void
model_row_attach (ModelRow    *row,
                  GtkWidget   *table,
                  gint         row_index,
                  const gchar *model_file)
{
  row->chooser = gtk_file_chooser_button_new ("Choose a SinGAN model file",
                                              GTK_FILE_CHOOSER_ACTION_OPEN);
  add_model_filters (GTK_FILE_CHOOSER (row->chooser));
  gtk_widget_set_size_request (row->chooser, 300, -1);
  if (model_file[0] != '\0' && g_file_test (model_file, G_FILE_TEST_IS_REGULAR))
    gtk_file_chooser_set_filename (GTK_FILE_CHOOSER (row->chooser), model_file);
  gimp_table_attach_aligned (GTK_TABLE (table), 0, row_index, "_Model file:", 0.0, 0.5,
                             row->chooser, 2, FALSE);

  /* A GTK 2 label wraps only at a fixed width; without one it widens the dialog instead. */
  row->info = gtk_label_new (NULL);
  gtk_label_set_line_wrap (GTK_LABEL (row->info), TRUE);
  gtk_widget_set_size_request (row->info, 300, -1);
  gtk_misc_set_alignment (GTK_MISC (row->info), 0.0, 0.5);
  gimp_label_set_attributes (GTK_LABEL (row->info), PANGO_ATTR_STYLE, PANGO_STYLE_ITALIC, -1);
  gtk_table_attach (GTK_TABLE (table), row->info, 1, 3, row_index + 1, row_index + 2,
                    GTK_FILL, GTK_FILL, 0, 0);
  gtk_widget_show (row->info);

  g_signal_connect (row->chooser, "file-set", G_CALLBACK (model_file_set), row);
}

/* Copies the chosen model file into @model_file; FALSE (with a message) when none fits. */
static gboolean
model_row_get (ModelRow *row,
               gchar    *model_file)
{
  gchar    *path = gtk_file_chooser_get_filename (GTK_FILE_CHOOSER (row->chooser));
  gboolean  fits = path && g_strlcpy (model_file, path, MODEL_PATH_SIZE) < MODEL_PATH_SIZE;

  if (path && ! fits)
    g_message ("The model file name is longer than %d bytes.", MODEL_PATH_SIZE - 1);

  g_free (path);
  return fits;
}

static void
use_trained_size_clicked (GtkButton *button,
                          ModelRow  *row)
{
  if (! row->loaded)
    return;

  gtk_spin_button_set_value (GTK_SPIN_BUTTON (row->width), row->summary.width);
  gtk_spin_button_set_value (GTK_SPIN_BUTTON (row->height), row->summary.height);
}

/* Runs @dialog until OK with a model file or Cancel; returns TRUE for OK. */
static gboolean
run_until_model_chosen (GtkWidget *dialog,
                        ModelRow  *row,
                        gchar     *model_file)
{
  while (gimp_dialog_run (GIMP_DIALOG (dialog)) == GTK_RESPONSE_OK)
    {
      if (model_row_get (row, model_file))
        return TRUE;

      gtk_label_set_text (GTK_LABEL (row->info),
                          "Choose a model file written by SinGAN Train or by the pegan command.");
    }

  return FALSE;
}

gboolean
pegan_gimp_retarget_dialog (RetargetValues *values,
                            gint32          drawable)
{
  GtkWidget *dialog;
  GtkWidget *table;
  GtkWidget *size_button;
  GtkWidget *seed;
  GtkWidget *output;
  ModelRow   row = { 0 };
  gboolean   confirmed;
  gint       new_image = values->new_image;

  dialog = new_dialog ("SinGAN Retarget", RETARGET_PROC);
  table = new_table (dialog, 8);

  row.width = new_int_spin (values->width, 1, MAX_GENERATE_SIDE);
  row.height = new_int_spin (values->height, 1, MAX_GENERATE_SIDE);
  row.start_stage = new_int_spin (values->start_stage, 0, 64);
  model_row_attach (&row, table, 0, values->model_file);

  gimp_table_attach_aligned (GTK_TABLE (table), 0, 2, "_Width:", 0.0, 0.5,
                             row.width, 1, TRUE);
  gimp_table_attach_aligned (GTK_TABLE (table), 0, 3, "_Height:", 0.0, 0.5,
                             row.height, 1, TRUE);

  size_button = gtk_button_new_with_mnemonic ("Use _trained size");
  gimp_help_set_help_data (size_button, "Set width and height to the model's trained size", NULL);
  g_signal_connect (size_button, "clicked", G_CALLBACK (use_trained_size_clicked), &row);
  gtk_table_attach (GTK_TABLE (table), size_button, 2, 3, 2, 4, GTK_FILL, GTK_SHRINK, 0, 0);
  gtk_widget_show (size_button);

  seed = gimp_random_seed_new (&values->seed, &values->random_seed);
  gimp_table_attach_aligned (GTK_TABLE (table), 0, 4, "_Seed:", 0.0, 0.5, seed, 2, TRUE);

  gimp_table_attach_aligned (GTK_TABLE (table), 0, 5, "Start s_tage:", 0.0, 0.5,
                             row.start_stage, 1, TRUE);
  gimp_help_set_help_data (row.start_stage,
                           "0 gives a fully random image; each higher stage keeps more of the "
                           "training image's layout", NULL);

  output = gimp_int_radio_group_new (TRUE, "Output", G_CALLBACK (gimp_radio_button_update),
                                     &new_image, new_image,
                                     "_New image",                TRUE,  NULL,
                                     "Resize the _layer in place", FALSE, NULL,
                                     NULL);
  gtk_table_attach (GTK_TABLE (table), output, 0, 3, 6, 7, GTK_FILL, GTK_FILL, 0, 6);
  gtk_widget_show (output);

  if (gimp_drawable_has_alpha (drawable))
    {
      GtkWidget *note = gtk_label_new ("The layer's alpha channel is resized bilinearly "
                                       "to the new size.");

      gtk_misc_set_alignment (GTK_MISC (note), 0.0, 0.5);
      gtk_table_attach (GTK_TABLE (table), note, 0, 3, 7, 8, GTK_FILL, GTK_FILL, 0, 0);
      gtk_widget_show (note);
    }

  model_row_update (&row);
  gtk_widget_show (dialog);
  gtk_widget_grab_focus (row.width);

  confirmed = run_until_model_chosen (dialog, &row, values->model_file);
  if (confirmed)
    {
      values->width = spin_value (row.width);
      values->height = spin_value (row.height);
      values->start_stage = spin_value (row.start_stage);
      values->new_image = new_image;
      /* gimp_random_seed_new updates values->seed and values->random_seed itself. */
    }

  gtk_widget_destroy (dialog);
  return confirmed;
}

gboolean
pegan_gimp_sample_dialog (SampleValues *values)
{
  GtkWidget *dialog;
  GtkWidget *table;
  GtkWidget *count;
  GtkWidget *seed;
  ModelRow   row = { 0 };
  gboolean   confirmed;

  dialog = new_dialog ("SinGAN Sample", SAMPLE_PROC);
  table = new_table (dialog, 4);

  model_row_attach (&row, table, 0, values->model_file);

  count = new_int_spin (values->count, 1, MAX_SAMPLE_COUNT);
  gimp_table_attach_aligned (GTK_TABLE (table), 0, 2, "_Layers:", 0.0, 0.5, count, 1, TRUE);
  gimp_help_set_help_data (count, "Number of random images, each added as a layer", NULL);

  seed = gimp_random_seed_new (&values->seed, &values->random_seed);
  gimp_table_attach_aligned (GTK_TABLE (table), 0, 3, "_Seed:", 0.0, 0.5, seed, 2, TRUE);
  gimp_help_set_help_data (GIMP_RANDOM_SEED_SPINBUTTON (seed),
                           "Seed of the first layer; the next layers use the following seeds",
                           NULL);

  model_row_update (&row);
  gtk_widget_show (dialog);

  confirmed = run_until_model_chosen (dialog, &row, values->model_file);
  if (confirmed)
    values->count = spin_value (count);

  gtk_widget_destroy (dialog);
  return confirmed;
}

/* Widgets of the train dialog's output file row. */
typedef struct
{
  GtkWidget *dialog;
  GtkWidget *entry;
} OutputRow;

static void
browse_clicked (GtkButton *button,
                OutputRow *row)
{
  GtkWidget   *chooser;
  const gchar *current = gtk_entry_get_text (GTK_ENTRY (row->entry));

  chooser = gtk_file_chooser_dialog_new ("Save the SinGAN model as", GTK_WINDOW (row->dialog),
                                         GTK_FILE_CHOOSER_ACTION_SAVE,
                                         "_Cancel", GTK_RESPONSE_CANCEL,
                                         "_Save",   GTK_RESPONSE_ACCEPT,
                                         NULL);
  gtk_file_chooser_set_do_overwrite_confirmation (GTK_FILE_CHOOSER (chooser), TRUE);
  add_model_filters (GTK_FILE_CHOOSER (chooser));

  if (current[0] != '\0')
    {
      gchar *path = g_filename_from_utf8 (current, -1, NULL, NULL, NULL);
      gchar *folder = path ? g_path_get_dirname (path) : NULL;
      gchar *name = path ? g_path_get_basename (path) : NULL;

      if (folder && g_file_test (folder, G_FILE_TEST_IS_DIR))
        gtk_file_chooser_set_current_folder (GTK_FILE_CHOOSER (chooser), folder);
      if (name)
        gtk_file_chooser_set_current_name (GTK_FILE_CHOOSER (chooser), name);
      g_free (name);
      g_free (folder);
      g_free (path);
    }

  if (gtk_dialog_run (GTK_DIALOG (chooser)) == GTK_RESPONSE_ACCEPT)
    {
      gchar *path = gtk_file_chooser_get_filename (GTK_FILE_CHOOSER (chooser));

      gtk_entry_set_text (GTK_ENTRY (row->entry), gimp_filename_to_utf8 (path));
      g_free (path);
    }

  gtk_widget_destroy (chooser);
}

/* Proposes IMAGE-FOLDER/IMAGE-NAME.pegan for an image loaded from a file; otherwise keeps the
 * last model file, or ~/untitled.pegan on a first run. */
static void
propose_model_file (TrainValues *values,
                    gint32       image)
{
  gchar *image_file = gimp_image_get_filename (image);
  gchar *proposal = NULL;

  if (image_file)
    {
      gchar *dot = strrchr (image_file, '.');
      gchar *slash = strrchr (image_file, G_DIR_SEPARATOR);

      if (dot && (! slash || dot > slash))
        *dot = '\0';
      proposal = g_strconcat (image_file, ".pegan", NULL);
    }
  else if (values->model_file[0] == '\0')
    {
      proposal = g_build_filename (g_get_home_dir (), "untitled.pegan", NULL);
    }

  if (proposal)
    g_strlcpy (values->model_file, proposal, sizeof values->model_file);

  g_free (proposal);
  g_free (image_file);
}

/* Returns a combo box of @labels whose active item is the position of @active in @names. */
static GtkWidget *
new_name_combo (const gchar *const *names,
                const gchar       **labels,
                const gchar        *active)
{
  gint       count = g_strv_length ((gchar **) names);
  GtkWidget *combo = gimp_int_combo_box_new_array (count, labels);
  gint       i;

  gimp_int_combo_box_set_active (GIMP_INT_COMBO_BOX (combo), 0);
  for (i = 0; i < count; i++)
    if (strcmp (names[i], active) == 0)
      gimp_int_combo_box_set_active (GIMP_INT_COMBO_BOX (combo), i);

  return combo;
}

/* Returns the name in @names of the active item of a combo box from new_name_combo. */
static const gchar *
combo_name (GtkWidget          *combo,
            const gchar *const *names)
{
  gint index = 0;

  gimp_int_combo_box_get_active (GIMP_INT_COMBO_BOX (combo), &index);
  return names[index];
}

gboolean
pegan_gimp_train_dialog (TrainValues *values,
                         gint32       image)
{
  GtkWidget *dialog;
  GtkWidget *table;
  GtkWidget *file_box;
  GtkWidget *browse;
  GtkWidget *variant;
  GtkWidget *preset;
  GtkWidget *seed;
  GtkWidget *iterations;
  GtkWidget *note;
  OutputRow  output;
  gboolean   confirmed = FALSE;

  propose_model_file (values, image);

  dialog = new_dialog ("SinGAN Train", TRAIN_PROC);
  table = new_table (dialog, 6);

  output.dialog = dialog;
  output.entry = gtk_entry_new ();
  gtk_entry_set_width_chars (GTK_ENTRY (output.entry), 40);
  gtk_entry_set_text (GTK_ENTRY (output.entry), gimp_filename_to_utf8 (values->model_file));
  browse = gtk_button_new_with_mnemonic ("_Browse...");
  g_signal_connect (browse, "clicked", G_CALLBACK (browse_clicked), &output);

  file_box = gtk_hbox_new (FALSE, 6);
  gtk_box_pack_start (GTK_BOX (file_box), output.entry, TRUE, TRUE, 0);
  gtk_box_pack_start (GTK_BOX (file_box), browse, FALSE, FALSE, 0);
  gtk_widget_show (output.entry);
  gtk_widget_show (browse);
  gimp_table_attach_aligned (GTK_TABLE (table), 0, 0, "_Model file:", 0.0, 0.5,
                             file_box, 2, FALSE);

  variant = new_name_combo (pegan_gimp_variants, variant_labels, values->variant);
  gimp_table_attach_aligned (GTK_TABLE (table), 0, 1, "_Variant:", 0.0, 0.5, variant, 2, FALSE);

  preset = new_name_combo (pegan_gimp_presets, preset_labels, values->preset);
  gimp_table_attach_aligned (GTK_TABLE (table), 0, 2, "_Preset:", 0.0, 0.5, preset, 2, FALSE);

  seed = gimp_random_seed_new (&values->seed, &values->random_seed);
  gimp_table_attach_aligned (GTK_TABLE (table), 0, 3, "_Seed:", 0.0, 0.5, seed, 2, TRUE);

  iterations = new_int_spin (values->iterations, 0, 100000);
  gimp_table_attach_aligned (GTK_TABLE (table), 0, 4, "_Iterations per stage:", 0.0, 0.5,
                             iterations, 1, TRUE);
  gimp_help_set_help_data (iterations, "0 keeps the preset's number of iterations", NULL);

  note = gtk_label_new ("Trains on the whole layer and ignores its alpha channel. "
                        "Stop in the progress window saves the stages that finished.");
  gtk_label_set_line_wrap (GTK_LABEL (note), TRUE);
  gtk_widget_set_size_request (note, 420, -1);
  gtk_misc_set_alignment (GTK_MISC (note), 0.0, 0.5);
  gtk_table_attach (GTK_TABLE (table), note, 0, 3, 5, 6, GTK_FILL, GTK_FILL, 0, 6);
  gtk_widget_show (note);

  gtk_widget_show (dialog);

  while (gimp_dialog_run (GIMP_DIALOG (dialog)) == GTK_RESPONSE_OK)
    {
      const gchar *text = gtk_entry_get_text (GTK_ENTRY (output.entry));
      gchar       *path = g_filename_from_utf8 (text, -1, NULL, NULL, NULL);

      if (path && path[0] != '\0' &&
          g_strlcpy (values->model_file, path, sizeof values->model_file) <
          sizeof values->model_file)
        {
          g_strlcpy (values->variant, combo_name (variant, pegan_gimp_variants),
                     sizeof values->variant);
          g_strlcpy (values->preset, combo_name (preset, pegan_gimp_presets),
                     sizeof values->preset);
          values->iterations = spin_value (iterations);
          confirmed = TRUE;
        }
      else
        {
          g_message ("Name the model file to write, with at most %d bytes.",
                     MODEL_PATH_SIZE - 1);
        }

      g_free (path);
      if (confirmed)
        break;
    }

  gtk_widget_destroy (dialog);
  return confirmed;
}

struct _TrainProgressWindow
{
  GtkWidget *dialog;
  GtkWidget *stage;
  GtkWidget *bar;
  GtkWidget *details;
  gboolean   stopped;
};

static void
train_window_response (GtkDialog           *dialog,
                       gint                 response,
                       TrainProgressWindow *window)
{
  window->stopped = TRUE;
  gtk_dialog_set_response_sensitive (dialog, GTK_RESPONSE_CANCEL, FALSE);
  gtk_label_set_text (GTK_LABEL (window->details),
                      "Stopping after the current iteration...");
}

/* Closing the window stops training too, but the window stays until training has ended. */
static gboolean
train_window_delete (GtkWidget           *widget,
                     GdkEvent            *event,
                     TrainProgressWindow *window)
{
  train_window_response (GTK_DIALOG (widget), GTK_RESPONSE_CANCEL, window);
  return TRUE;
}

TrainProgressWindow *
pegan_gimp_train_window_new (void)
{
  TrainProgressWindow *window = g_new0 (TrainProgressWindow, 1);
  GtkWidget           *vbox;

  window->dialog = gimp_dialog_new ("Training SinGAN", PLUG_IN_ROLE, NULL, 0,
                                    gimp_standard_help_func, TRAIN_PROC,
                                    "_Stop", GTK_RESPONSE_CANCEL,
                                    NULL);
  gimp_window_set_transient (GTK_WINDOW (window->dialog));
  g_signal_connect (window->dialog, "response", G_CALLBACK (train_window_response), window);
  g_signal_connect (window->dialog, "delete-event", G_CALLBACK (train_window_delete), window);

  vbox = gtk_vbox_new (FALSE, 6);
  gtk_container_set_border_width (GTK_CONTAINER (vbox), 12);
  gtk_box_pack_start (GTK_BOX (gtk_dialog_get_content_area (GTK_DIALOG (window->dialog))),
                      vbox, TRUE, TRUE, 0);

  window->stage = gtk_label_new ("Preparing the image pyramid...");
  gtk_misc_set_alignment (GTK_MISC (window->stage), 0.0, 0.5);
  gtk_box_pack_start (GTK_BOX (vbox), window->stage, FALSE, FALSE, 0);

  window->bar = gtk_progress_bar_new ();
  gtk_widget_set_size_request (window->bar, 360, -1);
  gtk_box_pack_start (GTK_BOX (vbox), window->bar, FALSE, FALSE, 0);

  window->details = gtk_label_new ("Stop saves the stages that finished.");
  gtk_misc_set_alignment (GTK_MISC (window->details), 0.0, 0.5);
  gimp_label_set_attributes (GTK_LABEL (window->details), PANGO_ATTR_STYLE, PANGO_STYLE_ITALIC,
                             -1);
  gtk_box_pack_start (GTK_BOX (vbox), window->details, FALSE, FALSE, 0);

  gtk_widget_show_all (window->dialog);
  return window;
}

void
pegan_gimp_train_window_update (TrainProgressWindow      *window,
                                const PeganTrainProgress *report)
{
  gdouble  fraction = 0.0;
  gchar   *text;
  guint    seconds = (guint) report->elapsed_seconds;

  if (report->num_stages > 0 && report->iterations_per_stage > 0)
    fraction = (report->stage + (gdouble) report->iteration / report->iterations_per_stage) /
               report->num_stages;
  gtk_progress_bar_set_fraction (GTK_PROGRESS_BAR (window->bar), CLAMP (fraction, 0.0, 1.0));

  text = g_strdup_printf ("Stage %u of %u, iteration %u of %u",
                          report->stage + 1, report->num_stages,
                          report->iteration, report->iterations_per_stage);
  gtk_label_set_text (GTK_LABEL (window->stage), text);
  g_free (text);

  if (! window->stopped)
    {
      text = g_strdup_printf ("%u:%02u elapsed. Reconstruction error %.4f. "
                              "Stop saves the stages that finished.",
                              seconds / 60, seconds % 60, report->loss_recon);
      gtk_label_set_text (GTK_LABEL (window->details), text);
      g_free (text);
    }
}

gboolean
pegan_gimp_train_window_stopped (TrainProgressWindow *window)
{
  while (gtk_events_pending ())
    gtk_main_iteration ();

  return window->stopped;
}

void
pegan_gimp_train_window_destroy (TrainProgressWindow *window)
{
  gtk_widget_destroy (window->dialog);
  g_free (window);
}
