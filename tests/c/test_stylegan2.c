/*
 * Tests of the StyleGAN2 functions of the pegan C API: loading MMGeneration checkpoints and pegan
 * files, training, generating at several sizes into every image layout, the sampling options,
 * threads, and the rejection of bad input.
 *
 * Usage: test_stylegan2 CHECKPOINT.pth SCRATCH_DIR
 *   CHECKPOINT.pth  the reduced MMGeneration MS-PIE config-f checkpoint of the test vectors
 *                   (tests/data/vectors/stylegan2/mspie_config-f_small/checkpoint.pth): 32 x 32
 *                   pixels at the trained size, 64 style channels, 8 style rows
 *   SCRATCH_DIR     an existing, empty, writable folder for model and image files
 *
 * ffi/tests/c_api.rs builds this program against the installed header and library and runs it
 * under valgrind. It prints one line per failed check and ends with "N passed, N failed"; the exit
 * status is 0 only when no check failed.
 */
#define _XOPEN_SOURCE 700

#include "check.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Shape of the reference checkpoint. */
#define TRAINED_SIDE 32
#define SIDE_STEP 8
#define STYLE_CHANNELS 64
#define STYLE_ROWS 8

/* The tiny preset at two training scales, two images per batch, with both penalties on every
   second iteration, so the first iteration runs them. */
static const char *train_config =
    "{\"preset\": \"tiny\", \"overrides\": {\"training\": {\"batch_size\": 2, \"multi_input_scales\": [0, 2], "
    "\"multi_scale_probability\": null, \"r1_interval\": 2, \"pl_interval\": 2}}}";

static const char *singan_config =
    "{\"variant\": \"csg\", \"preset\": \"tiny\", \"overrides\": {\"train\": {\"iters_per_scale\": 1}}}";

static PeganStyleGan2SampleOptions sample_options(uint32_t width, uint32_t height, uint64_t seed) {
    PeganStyleGan2SampleOptions options;
    memset(&options, 0xFF, sizeof options); /* init must set every field */
    pegan_stylegan2_sample_options_init(&options);
    options.width = width;
    options.height = height;
    options.seed = seed;
    return options;
}

/* Generates an 8-bit RGB image into a new buffer; returns NULL on failure. */
static uint8_t *generate_rgb8(const PeganStyleGan2Model *model, const PeganStyleGan2SampleOptions *options,
                              uint32_t width, uint32_t height) {
    size_t len = (size_t)width * height * 3;
    uint8_t *pixels = (uint8_t *)malloc(len);
    if (pixels == NULL) {
        return NULL;
    }
    PeganImage out = image_of(width, height, 3, PEGAN_SAMPLE_TYPE_U8, (size_t)width * 3, pixels);
    PeganStatus status = pegan_stylegan2_generate(model, options, &out, len);
    if (status != PEGAN_STATUS_OK) {
        fprintf(stderr, "generate %u x %u seed %llu: %s: %s\n", width, height, (unsigned long long)options->seed,
                pegan_status_name((int)status), pegan_last_error_message());
        free(pixels);
        return NULL;
    }
    return pixels;
}

/* Generates the image of `options` at its size, given as width x height with 0 meaning 32. */
static uint8_t *generate_options_rgb8(const PeganStyleGan2Model *model, const PeganStyleGan2SampleOptions *options) {
    uint32_t width = options->width == 0 ? TRAINED_SIDE : options->width;
    uint32_t height = options->height == 0 ? TRAINED_SIDE : options->height;
    return generate_rgb8(model, options, width, height);
}

static int same_pixels(const uint8_t *a, const uint8_t *b, size_t len) {
    return a != NULL && b != NULL && memcmp(a, b, len) == 0;
}

static int different_pixels(const uint8_t *a, const uint8_t *b, size_t len) {
    return a != NULL && b != NULL && memcmp(a, b, len) != 0;
}

/* Fills `latent` with standard normal values from a fixed generator (xorshift64 and Box-Muller). */
static void fill_latent(float *latent, size_t len, uint64_t seed) {
    uint64_t state = seed * 0x9E3779B97F4A7C15ULL + 1;
    for (size_t i = 0; i < len; i++) {
        double uniform[2];
        for (int k = 0; k < 2; k++) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            uniform[k] = ((double)(state >> 11) + 1.0) / 9007199254740993.0; /* in (0, 1] */
        }
        latent[i] = (float)(sqrt(-2.0 * log(uniform[0])) * cos(6.283185307179586 * uniform[1]));
    }
}

static long read_file(const char *path, uint8_t **out_data) {
    *out_data = NULL;
    FILE *file = fopen(path, "rb");
    if (file == NULL) {
        return -1;
    }
    long size = -1;
    if (fseek(file, 0, SEEK_END) == 0) {
        size = ftell(file);
    }
    if (size > 0 && fseek(file, 0, SEEK_SET) == 0) {
        *out_data = (uint8_t *)malloc((size_t)size);
        if (*out_data == NULL || fread(*out_data, 1, (size_t)size, file) != (size_t)size) {
            free(*out_data);
            *out_data = NULL;
            size = -1;
        }
    }
    fclose(file);
    return size;
}

/* ---- loading ---- */

typedef struct LogRecord {
    pthread_mutex_t lock;
    int saw_loaded_message;
} LogRecord;

static void log_to_record(PeganLogLevel level, const char *message, void *user_data) {
    LogRecord *record = (LogRecord *)user_data;
    pthread_mutex_lock(&record->lock);
    if (level == PEGAN_LOG_LEVEL_INFO && strstr(message, "StyleGAN2 model loaded") != NULL) {
        record->saw_loaded_message = 1;
    }
    pthread_mutex_unlock(&record->lock);
}

static PeganStyleGan2Model *test_load(const PeganContext *context, const char *checkpoint, LogRecord *log) {
    PeganStyleGan2Model *model = NULL;
    EXPECT_STATUS(pegan_stylegan2_model_load(context, checkpoint, NULL, &model), PEGAN_STATUS_OK);
    CHECK(model != NULL);
    CHECK(log->saw_loaded_message);
    if (model == NULL) {
        return NULL;
    }

    PeganStyleGan2Info info;
    memset(&info, 0xFF, sizeof info);
    EXPECT_STATUS(pegan_stylegan2_model_info(model, &info), PEGAN_STATUS_OK);
    CHECK(info.width == TRAINED_SIDE);
    CHECK(info.height == TRAINED_SIDE);
    CHECK(info.width_step == SIDE_STEP);
    CHECK(info.height_step == SIDE_STEP);
    CHECK(info.max_width == TRAINED_SIDE + 64 * SIDE_STEP);
    CHECK(info.max_height == TRAINED_SIDE + 64 * SIDE_STEP);
    CHECK(info.num_style_rows == STYLE_ROWS);
    CHECK(info.style_channels == STYLE_CHANNELS);
    CHECK(info.multi_scale);
    CHECK(info.has_discriminator);

    char *json = NULL;
    EXPECT_STATUS(pegan_stylegan2_model_info_json(model, &json), PEGAN_STATUS_OK);
    CHECK(json != NULL);
    if (json != NULL) {
        CHECK(strstr(json, "\"kind\":\"stylegan2\"") != NULL);
        CHECK(strstr(json, "\"source\":\"mmgeneration\"") != NULL);
        CHECK(strstr(json, "\"style_channels\":64") != NULL);
        CHECK(strstr(json, "\"num_style_rows\":8") != NULL);
        CHECK(strstr(json, "\"width_step\":8") != NULL);
        CHECK(strstr(json, "\"config\":{") != NULL);
        CHECK(strstr(json, "\"out_size\":32") != NULL);
    }
    pegan_string_free(json);

    /* Bad input to load, info and info_json. */
    char path[4200];
    PeganStyleGan2Model *loaded = (PeganStyleGan2Model *)&info; /* any non-NULL value: a failed call resets it */
    EXPECT_STATUS(pegan_stylegan2_model_load(NULL, checkpoint, NULL, &loaded), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("context");
    CHECK(loaded == NULL);
    EXPECT_STATUS(pegan_stylegan2_model_load(context, NULL, NULL, &loaded), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("path");
    EXPECT_STATUS(pegan_stylegan2_model_load(context, checkpoint, NULL, NULL), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("out_model");
    EXPECT_STATUS(pegan_stylegan2_model_load(context, "", NULL, &loaded), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("empty path");

    scratch_path(path, sizeof path, "missing.pth");
    EXPECT_STATUS(pegan_stylegan2_model_load(context, path, NULL, &loaded), PEGAN_STATUS_IO);
    EXPECT_MESSAGE("missing.pth");

    scratch_path(path, sizeof path, "garbage.pegan");
    CHECK(write_file(path, "this is not a model file at all", 31));
    EXPECT_STATUS(pegan_stylegan2_model_load(context, path, NULL, &loaded), PEGAN_STATUS_INVALID_MODEL);
    EXPECT_MESSAGE("garbage.pegan");

    scratch_path(path, sizeof path, "garbage.pth");
    CHECK(write_file(path, "PK\003\004 a zip signature and nothing else", 41));
    EXPECT_STATUS(pegan_stylegan2_model_load(context, path, NULL, &loaded), PEGAN_STATUS_INVALID_MODEL);
    EXPECT_MESSAGE("garbage.pth");
    CHECK(loaded == NULL);

    /* The tiny preset describes the checkpoint's architecture, so loading with it changes nothing. */
    EXPECT_STATUS(pegan_stylegan2_model_load(context, checkpoint, "tiny", &loaded), PEGAN_STATUS_OK);
    PeganStyleGan2SampleOptions options = sample_options(40, 48, 2);
    uint8_t *inferred = generate_rgb8(model, &options, 40, 48);
    uint8_t *from_preset = loaded == NULL ? NULL : generate_rgb8(loaded, &options, 40, 48);
    CHECK(same_pixels(inferred, from_preset, (size_t)40 * 48 * 3));
    free(inferred);
    free(from_preset);
    pegan_stylegan2_model_free(loaded);

    EXPECT_STATUS(pegan_stylegan2_model_load(context, checkpoint, "config-z", &loaded), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("config-z");
    /* The small preset has 128 style channels; the checkpoint has 64. */
    EXPECT_STATUS(pegan_stylegan2_model_load(context, checkpoint, "small", &loaded), PEGAN_STATUS_INVALID_MODEL);
    EXPECT_MESSAGE("checkpoint.pth");
    CHECK(loaded == NULL);

    EXPECT_STATUS(pegan_stylegan2_model_info(NULL, &info), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("model");
    CHECK(info.width == 0);
    CHECK(info.style_channels == 0);
    EXPECT_STATUS(pegan_stylegan2_model_info(model, NULL), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("out_info");
    json = (char *)&info;
    EXPECT_STATUS(pegan_stylegan2_model_info_json(NULL, &json), PEGAN_STATUS_NULL_POINTER);
    CHECK(json == NULL);
    EXPECT_STATUS(pegan_stylegan2_model_info_json(model, NULL), PEGAN_STATUS_NULL_POINTER);

    pegan_stylegan2_model_free(NULL);
    return model;
}

/* ---- model files ---- */

static void test_model_files(const PeganContext *context, const PeganStyleGan2Model *model, const char *checkpoint) {
    char path[4200];
    size_t len = (size_t)TRAINED_SIDE * TRAINED_SIDE * 3;
    PeganStyleGan2SampleOptions options = sample_options(0, 0, 5);
    uint8_t *original = generate_options_rgb8(model, &options);
    CHECK(original != NULL);

    /* A checkpoint saved as a pegan file loads without a preset and generates the same images. */
    PeganStyleGan2Model *loaded = NULL;
    scratch_path(path, sizeof path, "stylegan2.pegan");
    EXPECT_STATUS(pegan_stylegan2_model_save(model, path), PEGAN_STATUS_OK);
    EXPECT_STATUS(pegan_stylegan2_model_load(context, path, NULL, &loaded), PEGAN_STATUS_OK);
    CHECK(loaded != NULL);
    uint8_t *from_file = loaded == NULL ? NULL : generate_options_rgb8(loaded, &options);
    CHECK(same_pixels(from_file, original, len));
    free(from_file);
    char *json = NULL;
    if (loaded != NULL && pegan_stylegan2_model_info_json(loaded, &json) == PEGAN_STATUS_OK) {
        CHECK(strstr(json, "\"source\":\"mmgeneration\"") != NULL);
    }
    pegan_string_free(json);
    pegan_stylegan2_model_free(loaded);

    loaded = (PeganStyleGan2Model *)&options;
    EXPECT_STATUS(pegan_stylegan2_model_load(context, path, "config-f", &loaded), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("pass NULL as preset");
    CHECK(loaded == NULL);

    /* The same through memory. */
    void *bytes = NULL;
    size_t bytes_len = 0;
    EXPECT_STATUS(pegan_stylegan2_model_save_to_memory(model, &bytes, &bytes_len), PEGAN_STATUS_OK);
    CHECK(bytes != NULL);
    CHECK(bytes_len > 8);
    EXPECT_STATUS(pegan_stylegan2_model_load_from_memory(context, bytes, bytes_len, &loaded), PEGAN_STATUS_OK);
    uint8_t *from_memory = loaded == NULL ? NULL : generate_options_rgb8(loaded, &options);
    CHECK(same_pixels(from_memory, original, len));
    free(from_memory);
    pegan_stylegan2_model_free(loaded);

    /* Bad input to load_from_memory. */
    loaded = (PeganStyleGan2Model *)&options;
    EXPECT_STATUS(pegan_stylegan2_model_load_from_memory(NULL, bytes, bytes_len, &loaded), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("context");
    CHECK(loaded == NULL);
    EXPECT_STATUS(pegan_stylegan2_model_load_from_memory(context, NULL, bytes_len, &loaded),
                  PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("data");
    EXPECT_STATUS(pegan_stylegan2_model_load_from_memory(context, bytes, bytes_len, NULL), PEGAN_STATUS_NULL_POINTER);
    EXPECT_STATUS(pegan_stylegan2_model_load_from_memory(context, bytes, 0, &loaded), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("data_len is 0");
    EXPECT_STATUS(pegan_stylegan2_model_load_from_memory(context, bytes, bytes_len - 1, &loaded),
                  PEGAN_STATUS_INVALID_MODEL);
    EXPECT_MESSAGE("model data");

    scratch_path(path, sizeof path, "truncated.pegan");
    CHECK(write_file(path, bytes, bytes_len / 2));
    EXPECT_STATUS(pegan_stylegan2_model_load(context, path, NULL, &loaded), PEGAN_STATUS_INVALID_MODEL);
    EXPECT_MESSAGE("truncated.pegan");
    CHECK(loaded == NULL);

    uint8_t *checkpoint_bytes = NULL;
    long checkpoint_len = read_file(checkpoint, &checkpoint_bytes);
    CHECK(checkpoint_len > 0);
    if (checkpoint_len > 0) {
        EXPECT_STATUS(pegan_stylegan2_model_load_from_memory(context, checkpoint_bytes, (size_t)checkpoint_len, &loaded),
                      PEGAN_STATUS_INVALID_MODEL);
        EXPECT_MESSAGE("pegan_stylegan2_model_load");
    }
    free(checkpoint_bytes);

    /* Bad input to save. */
    scratch_path(path, sizeof path, "no-such-folder/model.pegan");
    EXPECT_STATUS(pegan_stylegan2_model_save(model, path), PEGAN_STATUS_IO);
    EXPECT_MESSAGE("no-such-folder");
    EXPECT_STATUS(pegan_stylegan2_model_save(NULL, path), PEGAN_STATUS_NULL_POINTER);
    EXPECT_STATUS(pegan_stylegan2_model_save(model, NULL), PEGAN_STATUS_NULL_POINTER);
    EXPECT_STATUS(pegan_stylegan2_model_save(model, ""), PEGAN_STATUS_INVALID_ARGUMENT);

    pegan_buffer_free(bytes);
    bytes = &bytes;
    bytes_len = 7;
    EXPECT_STATUS(pegan_stylegan2_model_save_to_memory(NULL, &bytes, &bytes_len), PEGAN_STATUS_NULL_POINTER);
    CHECK(bytes == NULL);
    CHECK(bytes_len == 0);
    EXPECT_STATUS(pegan_stylegan2_model_save_to_memory(model, NULL, &bytes_len), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("out_data");
    EXPECT_STATUS(pegan_stylegan2_model_save_to_memory(model, &bytes, NULL), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("out_len");

    free(original);
}

/* A SinGAN file given to the StyleGAN2 loader, and StyleGAN2 files given to the SinGAN loader. */
static void test_model_kinds(const PeganContext *context, const char *checkpoint) {
    char singan_path[4200];
    char stylegan2_path[4200];
    scratch_path(singan_path, sizeof singan_path, "singan.pegan");
    scratch_path(stylegan2_path, sizeof stylegan2_path, "stylegan2.pegan");

    /* A SinGAN trained for one iteration per stage on a 32 x 32 gradient. */
    uint8_t pixels[32 * 32 * 3];
    for (int i = 0; i < 32 * 32; i++) {
        pixels[i * 3] = (uint8_t)(i % 32 * 8);
        pixels[i * 3 + 1] = (uint8_t)(i / 32 * 8);
        pixels[i * 3 + 2] = 128;
    }
    PeganImage image = image_of(32, 32, 3, PEGAN_SAMPLE_TYPE_U8, 32 * 3, pixels);
    PeganTrainOptions train;
    memset(&train, 0, sizeof train);
    train.config_json = singan_config;
    PeganSinGanModel *singan = NULL;
    EXPECT_STATUS(pegan_singan_train(context, &image, sizeof pixels, &train, &singan), PEGAN_STATUS_OK);
    EXPECT_STATUS(pegan_singan_model_save(singan, singan_path), PEGAN_STATUS_OK);
    pegan_singan_model_free(singan);

    PeganStyleGan2Model *stylegan2 = (PeganStyleGan2Model *)&train;
    EXPECT_STATUS(pegan_stylegan2_model_load(context, singan_path, NULL, &stylegan2), PEGAN_STATUS_INVALID_MODEL);
    EXPECT_MESSAGE("'singan' model");
    EXPECT_MESSAGE("pegan_singan_model_load");
    CHECK(stylegan2 == NULL);

    singan = (PeganSinGanModel *)&train;
    EXPECT_STATUS(pegan_singan_model_load(context, stylegan2_path, &singan), PEGAN_STATUS_INVALID_MODEL);
    EXPECT_MESSAGE("'stylegan2' model");
    EXPECT_MESSAGE("pegan_stylegan2_model_load");
    CHECK(singan == NULL);
    EXPECT_STATUS(pegan_singan_model_load(context, checkpoint, &singan), PEGAN_STATUS_INVALID_MODEL);
    EXPECT_MESSAGE("pegan_stylegan2_model_load");
    CHECK(singan == NULL);
}

/* ---- training ---- */

typedef struct TrainRecord {
    int calls;
    /* Report whose callback cancels training, counted from 1, or 0 for none. */
    int cancel_at_call;
    uint64_t last_iteration;
    uint64_t target_iteration;
    int fields_valid;
    int penalties_reported;
} TrainRecord;

static int record_train_progress(const PeganStyleGan2TrainProgress *progress, void *user_data) {
    TrainRecord *record = (TrainRecord *)user_data;
    record->calls++;
    record->last_iteration = progress->iteration;
    record->target_iteration = progress->target_iteration;
    if (progress->iteration != (uint64_t)record->calls || progress->iteration > progress->target_iteration ||
        (progress->side != TRAINED_SIDE && progress->side != TRAINED_SIDE + 2 * SIDE_STEP) ||
        progress->chosen_scale * SIDE_STEP + TRAINED_SIDE != progress->side || !isfinite(progress->loss_d) ||
        !isfinite(progress->loss_g) || !isfinite(progress->mean_path_length) || progress->elapsed_seconds < 0.0) {
        record->fields_valid = 0;
    }
    /* Both penalties run on iteration 0, the first report, and not on iteration 1. */
    if (progress->iteration == 1 && isfinite(progress->r1_penalty) && isfinite(progress->path_length_penalty)) {
        record->penalties_reported++;
    }
    if (progress->iteration == 2 && (isfinite(progress->r1_penalty) || isfinite(progress->path_length_penalty))) {
        record->fields_valid = 0;
    }
    return record->cancel_at_call > 0 && record->calls == record->cancel_at_call;
}

static PeganStyleGan2TrainOptions train_options(uint64_t iterations, const char *output_path, TrainRecord *record) {
    PeganStyleGan2TrainOptions options;
    memset(&options, 0, sizeof options);
    options.config_json = train_config;
    options.seed = 7;
    options.iterations = iterations;
    options.output_path = output_path;
    if (record != NULL) {
        options.progress_callback = record_train_progress;
        options.progress_user_data = record;
    }
    return options;
}

/* Reads an integer value of `key` from the model's JSON description, or returns -1. */
static long info_number(const PeganStyleGan2Model *model, const char *key) {
    char *json = NULL;
    char pattern[64];
    long value = -1;
    if (pegan_stylegan2_model_info_json(model, &json) != PEGAN_STATUS_OK) {
        return -1;
    }
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *found = strstr(json, pattern);
    if (found != NULL) {
        value = strtol(found + strlen(pattern), NULL, 10);
    }
    pegan_string_free(json);
    return value;
}

/* Writes four 32 x 32 training images with different colour gradients into `folder`. */
static int write_training_images(const char *folder) {
    uint8_t pixels[32 * 32 * 3];
    char path[4300];
    for (int index = 0; index < 4; index++) {
        for (int i = 0; i < 32 * 32; i++) {
            pixels[i * 3] = (uint8_t)(i % 32 * 8 * (index + 1));
            pixels[i * 3 + 1] = (uint8_t)(i / 32 * 8);
            pixels[i * 3 + 2] = (uint8_t)(64 * index);
        }
        PeganImage image = image_of(32, 32, 3, PEGAN_SAMPLE_TYPE_U8, 32 * 3, pixels);
        snprintf(path, sizeof path, "%s/face%d.png", folder, index);
        if (pegan_image_save_png(path, &image, sizeof pixels) != PEGAN_STATUS_OK) {
            return 0;
        }
    }
    return 1;
}

static void test_train(const PeganContext *context) {
    char data_dir[4200];
    char empty_dir[4200];
    char output[4200];
    char inside[4300];
    scratch_path(data_dir, sizeof data_dir, "faces");
    scratch_path(empty_dir, sizeof empty_dir, "no-images");
    scratch_path(output, sizeof output, "trained.pegan");
    CHECK(mkdir(data_dir, 0755) == 0);
    CHECK(mkdir(empty_dir, 0755) == 0);
    CHECK(write_training_images(data_dir));

    /* Two iterations with a checkpoint after the first and the model file at the end. */
    TrainRecord record = {.fields_valid = 1};
    PeganStyleGan2TrainOptions options = train_options(2, output, &record);
    options.checkpoint_every = 1;
    PeganStyleGan2Model *model = NULL;
    EXPECT_STATUS(pegan_stylegan2_train(context, data_dir, &options, &model), PEGAN_STATUS_OK);
    CHECK(model != NULL);
    CHECK(record.calls == 2);
    CHECK(record.last_iteration == 2);
    CHECK(record.target_iteration == 2);
    CHECK(record.fields_valid);
    CHECK(record.penalties_reported == 1);
    CHECK(info_number(model, "iteration") == 2);
    CHECK(info_number(model, "seed") == 7);

    /* The written file is the trained model. */
    PeganStyleGan2Model *loaded = NULL;
    EXPECT_STATUS(pegan_stylegan2_model_load(context, output, NULL, &loaded), PEGAN_STATUS_OK);
    CHECK(info_number(loaded, "iteration") == 2);
    PeganStyleGan2SampleOptions sample = sample_options(0, 0, 4);
    uint8_t *trained = model == NULL ? NULL : generate_options_rgb8(model, &sample);
    uint8_t *from_file = loaded == NULL ? NULL : generate_options_rgb8(loaded, &sample);
    CHECK(same_pixels(trained, from_file, (size_t)TRAINED_SIDE * TRAINED_SIDE * 3));
    free(trained);
    free(from_file);
    pegan_stylegan2_model_free(loaded);
    pegan_stylegan2_model_free(model);

    /* A cancel on the first report keeps that iteration, in the model and in the file. */
    TrainRecord cancel = {.cancel_at_call = 1, .fields_valid = 1};
    options = train_options(2, output, &cancel);
    model = NULL;
    EXPECT_STATUS(pegan_stylegan2_train(context, data_dir, &options, &model), PEGAN_STATUS_CANCELLED);
    EXPECT_MESSAGE("after 1 of 2 iterations");
    CHECK(cancel.calls == 1);
    CHECK(model != NULL);
    CHECK(info_number(model, "iteration") == 1);
    pegan_stylegan2_model_free(model);
    loaded = NULL;
    EXPECT_STATUS(pegan_stylegan2_model_load(context, output, NULL, &loaded), PEGAN_STATUS_OK);
    CHECK(info_number(loaded, "iteration") == 1);
    pegan_stylegan2_model_free(loaded);

    /* Bad input. */
    options = train_options(1, NULL, NULL);
    model = (PeganStyleGan2Model *)&options; /* any non-NULL value: a failed call resets it */
    EXPECT_STATUS(pegan_stylegan2_train(context, data_dir, &options, NULL), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("out_model");
    EXPECT_STATUS(pegan_stylegan2_train(NULL, data_dir, &options, &model), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("context");
    CHECK(model == NULL);
    EXPECT_STATUS(pegan_stylegan2_train(context, NULL, &options, &model), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("data_dir");
    EXPECT_STATUS(pegan_stylegan2_train(context, "", &options, &model), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("empty path");

    scratch_path(inside, sizeof inside, "missing-folder");
    EXPECT_STATUS(pegan_stylegan2_train(context, inside, &options, &model), PEGAN_STATUS_IO);
    EXPECT_MESSAGE("missing-folder");
    EXPECT_STATUS(pegan_stylegan2_train(context, empty_dir, &options, &model), PEGAN_STATUS_IO);
    EXPECT_MESSAGE("no .png");

    snprintf(inside, sizeof inside, "%s/model.pegan", data_dir);
    options.output_path = inside;
    EXPECT_STATUS(pegan_stylegan2_train(context, data_dir, &options, &model), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("inside the training folder");
    options.output_path = NULL;

    const char *bad_configs[][2] = {
        {"{\"preset\": ", "not valid JSON"},
        {"[1]", "JSON object"},
        {"{\"preset\": \"config-z\"}", "config-z"},
        {"{\"preset\": \"tiny\", \"seed\": 3}", "seed"},
        {"{\"preset\": \"tiny\", \"overrides\": {\"training\": {\"batch_size\": 0}}}", "batch size 0"},
        {"{\"config\": {\"generator\": {}}}", "config"},
    };
    for (size_t i = 0; i < sizeof bad_configs / sizeof bad_configs[0]; i++) {
        options.config_json = bad_configs[i][0];
        EXPECT_STATUS(pegan_stylegan2_train(context, data_dir, &options, &model), PEGAN_STATUS_INVALID_ARGUMENT);
        EXPECT_MESSAGE(bad_configs[i][1]);
        CHECK(model == NULL);
    }
}

/* ---- generation ---- */

static void test_generate_layouts(const PeganStyleGan2Model *model) {
    size_t len32 = (size_t)TRAINED_SIDE * TRAINED_SIDE * 3;

    /* Defaults: seed 0 at the trained size, equal to explicit sizes and an explicit seed 0. */
    uint8_t *defaults = (uint8_t *)malloc(len32);
    PeganImage out = image_of(TRAINED_SIDE, TRAINED_SIDE, 3, PEGAN_SAMPLE_TYPE_U8, TRAINED_SIDE * 3, defaults);
    EXPECT_STATUS(pegan_stylegan2_generate(model, NULL, &out, len32), PEGAN_STATUS_OK);
    int varied = 0;
    for (size_t i = 1; i < len32; i++) {
        varied |= defaults[i] != defaults[0];
    }
    CHECK(varied);
    PeganStyleGan2SampleOptions options = sample_options(TRAINED_SIDE, TRAINED_SIDE, 0);
    uint8_t *explicit_size = generate_options_rgb8(model, &options);
    CHECK(same_pixels(explicit_size, defaults, len32));
    free(explicit_size);

    /* One seed reproduces an image; another seed changes it. */
    options = sample_options(0, 0, 3);
    uint8_t *first = generate_options_rgb8(model, &options);
    uint8_t *again = generate_options_rgb8(model, &options);
    options.seed = 4;
    uint8_t *other = generate_options_rgb8(model, &options);
    CHECK(same_pixels(first, again, len32));
    CHECK(different_pixels(first, other, len32));
    free(first);
    free(again);
    free(other);

    /* 48 x 48 float RGBA with padded rows and a guard area: alpha is 1, padding and guard stay intact,
       and the colours equal the 8-bit RGB image of the same request. */
    options = sample_options(48, 48, 7);
    uint8_t *rgb48 = generate_options_rgb8(model, &options);
    CHECK(rgb48 != NULL);
    size_t stride = 48 * 4 * sizeof(float) + 12;
    size_t size = stride * 47 + 48 * 4 * sizeof(float);
    size_t guard = 64;
    uint8_t *buffer = (uint8_t *)malloc(size + guard);
    memset(buffer, 0xAB, size + guard);
    out = image_of(48, 48, 4, PEGAN_SAMPLE_TYPE_F32, stride, buffer);
    EXPECT_STATUS(pegan_stylegan2_generate(model, &options, &out, size + guard), PEGAN_STATUS_OK);
    int intact = 1;
    int opaque = 1;
    int in_range = 1;
    int matches_rgb8 = rgb48 != NULL;
    for (size_t y = 0; y < 48; y++) {
        const float *row = (const float *)(buffer + y * stride);
        for (size_t x = 0; x < 48; x++) {
            opaque &= row[x * 4 + 3] == 1.0f;
            for (int c = 0; c < 3; c++) {
                float value = row[x * 4 + c];
                in_range &= value >= 0.0f && value <= 1.0f;
                if (rgb48 != NULL) {
                    matches_rgb8 &= fabsf(value * 255.0f - rgb48[(y * 48 + x) * 3 + c]) <= 0.501f;
                }
            }
        }
        if (y < 47) {
            for (size_t i = 48 * 4 * sizeof(float); i < stride; i++) {
                intact &= buffer[y * stride + i] == 0xAB;
            }
        }
    }
    for (size_t i = size; i < size + guard; i++) {
        intact &= buffer[i] == 0xAB;
    }
    CHECK(intact);
    CHECK(opaque);
    CHECK(in_range);
    CHECK(matches_rgb8);
    free(buffer);
    free(rgb48);

    /* Non-square 48 x 64 (width x height) as 16-bit grey with padded rows: the luma of the RGB image. */
    options = sample_options(48, 64, 8);
    uint8_t *rgb = generate_options_rgb8(model, &options);
    CHECK(rgb != NULL);
    size_t stride16 = 48 * sizeof(uint16_t) + 6;
    size_t size16 = stride16 * 64;
    uint8_t *grey = (uint8_t *)malloc(size16);
    memset(grey, 0xCD, size16);
    out = image_of(48, 64, 1, PEGAN_SAMPLE_TYPE_U16, stride16, grey);
    EXPECT_STATUS(pegan_stylegan2_generate(model, &options, &out, size16), PEGAN_STATUS_OK);
    int is_luma = rgb != NULL;
    intact = 1;
    for (size_t y = 0; y < 64 && rgb != NULL; y++) {
        const uint16_t *row = (const uint16_t *)(grey + y * stride16);
        for (size_t x = 0; x < 48; x++) {
            const uint8_t *pixel = rgb + (y * 48 + x) * 3;
            float luma = (0.299f * pixel[0] + 0.587f * pixel[1] + 0.114f * pixel[2]) / 255.0f;
            is_luma &= fabsf(row[x] / 65535.0f - luma) < 0.01f;
        }
        for (size_t i = 48 * sizeof(uint16_t); i < stride16; i++) {
            intact &= grey[y * stride16 + i] == 0xCD;
        }
    }
    CHECK(is_luma);
    CHECK(intact);
    free(grey);

    /* The transposed size is another image, and width and height are not swapped. */
    options = sample_options(64, 48, 8);
    uint8_t *transposed = generate_options_rgb8(model, &options);
    CHECK(transposed != NULL);
    CHECK(different_pixels(transposed, rgb, (size_t)48 * 64 * 3));
    free(transposed);
    free(rgb);

    /* A zero height with a nonzero width: the trained height. */
    options = sample_options(40, 0, 1);
    uint8_t *wide = generate_rgb8(model, &options, 40, TRAINED_SIDE);
    CHECK(wide != NULL);
    free(wide);

    free(defaults);
}

static void test_sampling_options(const PeganStyleGan2Model *model) {
    size_t len = (size_t)TRAINED_SIDE * TRAINED_SIDE * 3;
    float latent[STYLE_CHANNELS];
    float other_latent[STYLE_CHANNELS];
    fill_latent(latent, STYLE_CHANNELS, 1);
    fill_latent(other_latent, STYLE_CHANNELS, 2);

    /* An explicit latent reproduces its image; another latent changes it. */
    PeganStyleGan2SampleOptions options = sample_options(0, 0, 11);
    options.latent = latent;
    options.latent_len = STYLE_CHANNELS;
    uint8_t *from_latent = generate_options_rgb8(model, &options);
    uint8_t *again = generate_options_rgb8(model, &options);
    CHECK(same_pixels(from_latent, again, len));
    free(again);
    options.latent = other_latent;
    uint8_t *from_other = generate_options_rgb8(model, &options);
    CHECK(different_pixels(from_latent, from_other, len));
    free(from_other);

    /* With a latent, the seed only draws the noise maps: without noise, seeds give equal images. */
    options.latent = latent;
    options.seed = 12;
    uint8_t *noise_seed = generate_options_rgb8(model, &options);
    CHECK(different_pixels(from_latent, noise_seed, len));
    free(noise_seed);
    options.noise_mode = PEGAN_STYLEGAN2_NOISE_MODE_ZERO;
    uint8_t *silent_a = generate_options_rgb8(model, &options);
    options.seed = 13;
    uint8_t *silent_b = generate_options_rgb8(model, &options);
    CHECK(same_pixels(silent_a, silent_b, len));
    CHECK(different_pixels(silent_a, from_latent, len));
    free(silent_a);
    free(silent_b);
    free(from_latent);

    /* Truncation 0 without noise gives the mean latent's image for every seed. */
    options = sample_options(0, 0, 1);
    options.truncation = 0.0;
    options.noise_mode = PEGAN_STYLEGAN2_NOISE_MODE_ZERO;
    uint8_t *mean_a = generate_options_rgb8(model, &options);
    options.seed = 2;
    uint8_t *mean_b = generate_options_rgb8(model, &options);
    CHECK(same_pixels(mean_a, mean_b, len));
    free(mean_b);
    /* Another truncation seed estimates another mean latent. */
    options.truncation_seed = 1;
    uint8_t *mean_c = generate_options_rgb8(model, &options);
    CHECK(different_pixels(mean_a, mean_c, len));
    free(mean_c);
    /* An explicit latent is truncated too. */
    options.truncation_seed = 0;
    options.latent = latent;
    options.latent_len = STYLE_CHANNELS;
    uint8_t *mean_latent = generate_options_rgb8(model, &options);
    CHECK(same_pixels(mean_a, mean_latent, len));
    free(mean_latent);
    free(mean_a);

    /* Truncation 0.7 is reproducible and differs from no truncation. */
    options = sample_options(0, 0, 21);
    uint8_t *full = generate_options_rgb8(model, &options);
    options.truncation = 0.7;
    uint8_t *truncated = generate_options_rgb8(model, &options);
    uint8_t *truncated_again = generate_options_rgb8(model, &options);
    CHECK(different_pixels(full, truncated, len));
    CHECK(same_pixels(truncated, truncated_again, len));
    free(truncated);
    free(truncated_again);

    /* Style mixing: another seed's rows change the image; the seed's own rows change nothing. */
    options = sample_options(0, 0, 21);
    options.mix_enabled = true;
    options.mix_seed = 22;
    options.mix_inject_index = 4;
    uint8_t *mixed = generate_options_rgb8(model, &options);
    CHECK(different_pixels(full, mixed, len));
    options.mix_inject_index = 1;
    uint8_t *mixed_coarse = generate_options_rgb8(model, &options);
    CHECK(different_pixels(mixed, mixed_coarse, len));
    options.mix_seed = 21;
    uint8_t *self_mixed = generate_options_rgb8(model, &options);
    CHECK(same_pixels(full, self_mixed, len));
    /* A disabled mix ignores its index. */
    options.mix_enabled = false;
    options.mix_seed = 22;
    options.mix_inject_index = 99;
    uint8_t *unmixed = generate_options_rgb8(model, &options);
    CHECK(same_pixels(full, unmixed, len));
    free(mixed);
    free(mixed_coarse);
    free(self_mixed);
    free(unmixed);

    /* The trained generator differs from its moving average. */
    options = sample_options(0, 0, 21);
    options.use_ema = false;
    uint8_t *trained = generate_options_rgb8(model, &options);
    CHECK(different_pixels(full, trained, len));
    free(trained);

    /* Noise modes: fixed maps are shared by every call, so a seed still reproduces its image. */
    options = sample_options(0, 0, 21);
    options.noise_mode = PEGAN_STYLEGAN2_NOISE_MODE_FIXED;
    uint8_t *fixed = generate_options_rgb8(model, &options);
    uint8_t *fixed_again = generate_options_rgb8(model, &options);
    options.noise_mode = PEGAN_STYLEGAN2_NOISE_MODE_ZERO;
    uint8_t *zero = generate_options_rgb8(model, &options);
    CHECK(same_pixels(fixed, fixed_again, len));
    CHECK(different_pixels(fixed, full, len));
    CHECK(different_pixels(zero, full, len));
    CHECK(different_pixels(zero, fixed, len));
    free(fixed);
    free(fixed_again);
    free(zero);

    free(full);
}

static void test_generate_errors(const PeganStyleGan2Model *model) {
    size_t len = (size_t)TRAINED_SIDE * TRAINED_SIDE * 3;
    uint8_t *pixels = (uint8_t *)malloc(50 * 50 * 3);
    PeganImage out = image_of(TRAINED_SIDE, TRAINED_SIDE, 3, PEGAN_SAMPLE_TYPE_U8, TRAINED_SIDE * 3, pixels);
    PeganImage out48 = image_of(48, 48, 3, PEGAN_SAMPLE_TYPE_U8, 48 * 3, pixels);
    PeganImage out50 = image_of(50, 50, 3, PEGAN_SAMPLE_TYPE_U8, 50 * 3, pixels);
    PeganImage bad;
    PeganStyleGan2SampleOptions options;

    /* NULL pointers. */
    EXPECT_STATUS(pegan_stylegan2_generate(NULL, NULL, &out, len), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("model");
    EXPECT_STATUS(pegan_stylegan2_generate(model, NULL, NULL, len), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("'out'");
    bad = out;
    bad.data = NULL;
    EXPECT_STATUS(pegan_stylegan2_generate(model, NULL, &bad, len), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("out->data");

    /* Sizes the model does not generate: the message names the nearest valid ones. */
    options = sample_options(50, 50, 0);
    EXPECT_STATUS(pegan_stylegan2_generate(model, &options, &out50, 50 * 50 * 3), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("50 px");
    EXPECT_MESSAGE("48");
    EXPECT_MESSAGE("56");
    options = sample_options(50, 48, 0);
    EXPECT_STATUS(pegan_stylegan2_generate(model, &options, &out48, 48 * 48 * 3), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("width 50");
    options = sample_options(20, 0, 0);
    bad = image_of(20, TRAINED_SIDE, 3, PEGAN_SAMPLE_TYPE_U8, 20 * 3, pixels);
    EXPECT_STATUS(pegan_stylegan2_generate(model, &options, &bad, len), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("32");

    /* Sizes above the largest one: 32 + 64 * 8 = 544 pixels. */
    options = sample_options(1000, 0, 0);
    EXPECT_STATUS(pegan_stylegan2_generate(model, &options, &out, len), PEGAN_STATUS_TOO_LARGE);
    EXPECT_MESSAGE("544");
    bad = image_of(1000, 1, 3, PEGAN_SAMPLE_TYPE_U8, 3000, pixels);
    EXPECT_STATUS(pegan_stylegan2_generate(model, NULL, &bad, len), PEGAN_STATUS_TOO_LARGE);
    EXPECT_MESSAGE("1000");
    options = sample_options(0, 0, 0);
    options.memory_limit_bytes = 1;
    EXPECT_STATUS(pegan_stylegan2_generate(model, &options, &out, len), PEGAN_STATUS_TOO_LARGE);
    EXPECT_MESSAGE("memory");

    /* Output images that do not fit the request or their buffer. */
    options = sample_options(48, 48, 0);
    EXPECT_STATUS(pegan_stylegan2_generate(model, &options, &out, len), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("requested size is 48 x 48");
    EXPECT_STATUS(pegan_stylegan2_generate(model, NULL, &out, len - 1), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("bytes");
    EXPECT_STATUS(pegan_stylegan2_generate(model, NULL, &out, 0), PEGAN_STATUS_INVALID_ARGUMENT);
    bad = out;
    bad.row_stride = TRAINED_SIDE * 3 - 1;
    EXPECT_STATUS(pegan_stylegan2_generate(model, NULL, &bad, len), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("row_stride");
    bad = out;
    bad.channels = 2;
    EXPECT_STATUS(pegan_stylegan2_generate(model, NULL, &bad, len), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("channels is 2");
    bad = out;
    bad.sample_type = 5;
    EXPECT_STATUS(pegan_stylegan2_generate(model, NULL, &bad, len), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("sample_type 5");

    /* Options out of range. */
    options = sample_options(0, 0, 0);
    options.noise_mode = 7;
    EXPECT_STATUS(pegan_stylegan2_generate(model, &options, &out, len), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("noise_mode 7");
    options = sample_options(48, 48, 0);
    options.noise_mode = PEGAN_STYLEGAN2_NOISE_MODE_FIXED;
    EXPECT_STATUS(pegan_stylegan2_generate(model, &options, &out48, 48 * 48 * 3), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("fixed noise");
    options = sample_options(0, 0, 0);
    options.truncation = -0.5;
    EXPECT_STATUS(pegan_stylegan2_generate(model, &options, &out, len), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("truncation -0.5");
    options.truncation = NAN;
    EXPECT_STATUS(pegan_stylegan2_generate(model, &options, &out, len), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("truncation NaN");

    options = sample_options(0, 0, 0);
    options.mix_enabled = true;
    options.mix_inject_index = 0;
    EXPECT_STATUS(pegan_stylegan2_generate(model, &options, &out, len), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("1..=7");
    options.mix_inject_index = STYLE_ROWS;
    EXPECT_STATUS(pegan_stylegan2_generate(model, &options, &out, len), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("index 8");

    float latent[STYLE_CHANNELS];
    fill_latent(latent, STYLE_CHANNELS, 3);
    options = sample_options(0, 0, 0);
    options.latent = latent;
    options.latent_len = STYLE_CHANNELS - 1;
    EXPECT_STATUS(pegan_stylegan2_generate(model, &options, &out, len), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("latent_len is 63");
    options.latent = NULL;
    options.latent_len = 5;
    EXPECT_STATUS(pegan_stylegan2_generate(model, &options, &out, len), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("latent_len is 5");
    latent[3] = NAN;
    options.latent = latent;
    options.latent_len = STYLE_CHANNELS;
    EXPECT_STATUS(pegan_stylegan2_generate(model, &options, &out, len), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("latent[3]");

    pegan_stylegan2_sample_options_init(NULL);
    free(pixels);
}

/* ---- threads ---- */

typedef struct GenerateJob {
    const PeganStyleGan2Model *model;
    uint64_t seeds[2];
    uint64_t truncation_seed;
    uint8_t *results[2];
    int own_message;
} GenerateJob;

static PeganStyleGan2SampleOptions job_options(const GenerateJob *job, int index) {
    PeganStyleGan2SampleOptions options = sample_options(48, 40, job->seeds[index]);
    options.truncation = 0.5;
    options.truncation_seed = job->truncation_seed;
    return options;
}

static void *generate_job(void *argument) {
    GenerateJob *job = (GenerateJob *)argument;
    for (int i = 0; i < 2; i++) {
        PeganStyleGan2SampleOptions options = job_options(job, i);
        job->results[i] = generate_options_rgb8(job->model, &options);
    }
    /* Error messages are per thread: this thread's error names this thread's bad value. */
    uint8_t pixel[3];
    PeganImage out = image_of(1, 1, 3, PEGAN_SAMPLE_TYPE_U8, 3, pixel);
    PeganStyleGan2SampleOptions options = job_options(job, 0);
    options.noise_mode = 40 + (PeganStyleGan2NoiseMode)job->seeds[0];
    char expected[32];
    snprintf(expected, sizeof expected, "noise_mode %u", (unsigned)options.noise_mode);
    job->own_message = pegan_stylegan2_generate(job->model, &options, &out, sizeof pixel) ==
                           PEGAN_STATUS_INVALID_ARGUMENT &&
                       strstr(pegan_last_error_message(), expected) != NULL;
    return NULL;
}

static void test_threads(const PeganStyleGan2Model *model) {
    /* The main thread's error message must survive the other threads' calls. */
    EXPECT_STATUS(pegan_stylegan2_generate(NULL, NULL, NULL, 0), PEGAN_STATUS_NULL_POINTER);

    GenerateJob jobs[2] = {
        {.model = model, .seeds = {1, 2}, .truncation_seed = 5},
        {.model = model, .seeds = {3, 4}, .truncation_seed = 6},
    };
    pthread_t threads[2];
    int started[2];
    for (int t = 0; t < 2; t++) {
        started[t] = pthread_create(&threads[t], NULL, generate_job, &jobs[t]) == 0;
        CHECK(started[t]);
    }
    for (int t = 0; t < 2; t++) {
        if (started[t]) {
            pthread_join(threads[t], NULL);
        }
    }
    EXPECT_MESSAGE("model");

    /* Each concurrent result equals the same request made alone. */
    for (int t = 0; t < 2; t++) {
        CHECK(jobs[t].own_message);
        for (int i = 0; i < 2; i++) {
            PeganStyleGan2SampleOptions options = job_options(&jobs[t], i);
            uint8_t *alone = generate_options_rgb8(model, &options);
            CHECK(same_pixels(alone, jobs[t].results[i], (size_t)48 * 40 * 3));
            free(alone);
            free(jobs[t].results[i]);
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s CHECKPOINT.pth SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    const char *checkpoint = argv[1];
    snprintf(scratch_dir, sizeof scratch_dir, "%s", argv[2]);

    LogRecord log;
    memset(&log, 0, sizeof log);
    pthread_mutex_init(&log.lock, NULL);
    PeganContextOptions context_options;
    memset(&context_options, 0, sizeof context_options);
    context_options.log_callback = log_to_record;
    context_options.log_user_data = &log;
    PeganContext *context = NULL;
    EXPECT_STATUS(pegan_context_new(&context_options, &context), PEGAN_STATUS_OK);

    PeganStyleGan2Model *model = test_load(context, checkpoint, &log);
    if (model != NULL) {
        test_model_files(context, model, checkpoint);
        test_model_kinds(context, checkpoint);
        test_train(context);

        /* Models keep what they need of their context, which may go first. */
        pegan_context_free(context);
        context = NULL;
        test_generate_layouts(model);
        test_sampling_options(model);
        test_generate_errors(model);
        test_threads(model);
    }

    pegan_stylegan2_model_free(model);
    pegan_context_free(context);
    pthread_mutex_destroy(&log.lock);
    return check_summary();
}
