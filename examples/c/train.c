/*
 * Trains a SinGAN on one image with the pegan C API and saves the model, printing progress.
 *
 * Usage: train IMAGE MODEL [VARIANT [PRESET [SEED]]]
 *   IMAGE    training image, PNG or JPEG
 *   MODEL    model file to write
 *   VARIANT  baseline, interp-pad, interp-pad-nobn, csg (default), spe4 or spe8
 *   PRESET   paper (for a GPU), fast (default: minutes on a CPU) or tiny (seconds, for tests)
 *   SEED     seed of the run, default 0
 *
 * Ctrl-C cancels training; the stages finished so far are saved to MODEL, and
 * `pegan singan train IMAGE -o MODEL --resume` continues them.
 */
#include <pegan.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static volatile sig_atomic_t interrupted;

static void on_interrupt(int signal_number) {
    (void)signal_number;
    interrupted = 1;
}

/* Prints the first iteration of each stage, every 100th, and each stage's end; cancels after Ctrl-C. */
static int print_progress(const PeganTrainProgress *progress, void *user_data) {
    (void)user_data;
    if (progress->stage_finished) {
        printf("stage %u/%u finished after %.1f s, reconstruction error %.5f\n", progress->stage + 1,
               progress->num_stages, progress->elapsed_seconds, progress->loss_recon);
    } else if (progress->iteration == 1 || progress->iteration % 100 == 0) {
        printf("stage %u/%u iteration %u/%u: loss D %.4f, loss G %.4f, reconstruction %.5f\n", progress->stage + 1,
               progress->num_stages, progress->iteration, progress->iterations_per_stage, progress->loss_d,
               progress->loss_g_adv, progress->loss_recon);
    }
    fflush(stdout);
    return interrupted ? 1 : 0;
}

static void print_log(PeganLogLevel level, const char *message, void *user_data) {
    (void)user_data;
    if (level <= PEGAN_LOG_LEVEL_WARN) {
        fprintf(stderr, "pegan: %s\n", message);
    }
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 6) {
        fprintf(stderr, "usage: %s IMAGE MODEL [VARIANT [PRESET [SEED]]]\n", argv[0]);
        return 2;
    }
    const char *image_path = argv[1];
    const char *model_path = argv[2];
    const char *variant = argc > 3 ? argv[3] : "csg";
    const char *preset = argc > 4 ? argv[4] : "fast";
    unsigned long long seed = argc > 5 ? strtoull(argv[5], NULL, 10) : 0;

    if (pegan_abi_version() != PEGAN_ABI_VERSION) {
        fprintf(stderr, "libpegan %s has ABI %u, but this program was built for ABI %d\n", pegan_version(),
                pegan_abi_version(), PEGAN_ABI_VERSION);
        return 1;
    }

    int exit_code = 1;
    PeganImage image = {0};
    PeganContext *context = NULL;
    PeganSinGanModel *model = NULL;

    PeganContextOptions context_options = {0};
    context_options.device = "cpu";
    context_options.log_callback = print_log;
    PeganStatus status = pegan_context_new(&context_options, &context);
    if (status != PEGAN_STATUS_OK) {
        fprintf(stderr, "cannot create the context: %s\n", pegan_last_error_message());
        goto done;
    }

    status = pegan_image_load(image_path, &image);
    if (status != PEGAN_STATUS_OK) {
        fprintf(stderr, "cannot load the image: %s\n", pegan_last_error_message());
        goto done;
    }
    printf("training %s on %s (%u x %u pixels) with the %s preset\n", variant, image_path, image.width,
           image.height, preset);

    /* Valid variant and preset names need no JSON escaping; other text fails as invalid JSON or an unknown name. */
    char config[256];
    snprintf(config, sizeof config, "{\"variant\": \"%s\", \"preset\": \"%s\"}", variant, preset);
    PeganTrainOptions train_options = {0};
    train_options.config_json = config;
    train_options.seed = seed;
    train_options.progress_callback = print_progress;

    signal(SIGINT, on_interrupt);
    status = pegan_singan_train(context, &image, image.row_stride * image.height, &train_options, &model);
    if (status != PEGAN_STATUS_OK && status != PEGAN_STATUS_CANCELLED) {
        fprintf(stderr, "training failed: %s\n", pegan_last_error_message());
        goto done;
    }
    if (status == PEGAN_STATUS_CANCELLED) {
        printf("training cancelled: %s\n", pegan_last_error_message());
    }

    /* A cancelled run still returns the finished stages, which are worth saving. */
    if (pegan_singan_model_save(model, model_path) != PEGAN_STATUS_OK) {
        fprintf(stderr, "cannot save the model: %s\n", pegan_last_error_message());
        goto done;
    }
    printf("saved %s\n", model_path);
    exit_code = status == PEGAN_STATUS_OK ? 0 : 1;

done:
    pegan_singan_model_free(model);
    pegan_image_free(&image);
    pegan_context_free(context);
    return exit_code;
}
