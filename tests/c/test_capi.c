/*
 * Tests of the pegan C API: every function's normal use and its rejection of bad input.
 *
 * Usage: test_capi IMAGE.png SCRATCH_DIR
 *   IMAGE.png    a training image of at least 24 pixels per side (the tests use balloons.png)
 *   SCRATCH_DIR  an existing writable folder for model and image files
 *
 * ffi/tests/c_api.rs builds this program against the installed header and library and runs it
 * under valgrind. It prints one line per failed check and ends with "N passed, N failed"; the exit
 * status is 0 only when no check failed.
 */
#define _XOPEN_SOURCE 700

#include "check.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *tiny_config = "{\"variant\": \"csg\", \"preset\": \"tiny\"}";
static const char *one_iteration_config =
    "{\"variant\": \"interp-pad\", \"preset\": \"tiny\", \"overrides\": {\"train\": {\"iters_per_scale\": 1}}}";

/* ---- versions and status names ---- */

static void test_versions(void) {
    char expected[64];
    snprintf(expected, sizeof expected, "%d.%d.%d", PEGAN_VERSION_MAJOR, PEGAN_VERSION_MINOR, PEGAN_VERSION_PATCH);
    CHECK(strcmp(pegan_version(), expected) == 0);
    CHECK(pegan_abi_version() == PEGAN_ABI_VERSION);

    CHECK(strcmp(pegan_status_name(PEGAN_STATUS_OK), "PEGAN_STATUS_OK") == 0);
    CHECK(strcmp(pegan_status_name(PEGAN_STATUS_IO), "PEGAN_STATUS_IO") == 0);
    CHECK(strcmp(pegan_status_name(PEGAN_STATUS_PANIC), "PEGAN_STATUS_PANIC") == 0);
    CHECK(strcmp(pegan_status_name(999), "PEGAN_STATUS_UNKNOWN") == 0);
    CHECK(strcmp(pegan_status_name(-1), "PEGAN_STATUS_UNKNOWN") == 0);
}

/* ---- contexts and logging ---- */

typedef struct LogRecord {
    pthread_mutex_t lock;
    int messages;
    int info_messages;
    int saw_stage_message;
} LogRecord;

static void log_to_record(PeganLogLevel level, const char *message, void *user_data) {
    LogRecord *record = (LogRecord *)user_data;
    pthread_mutex_lock(&record->lock);
    record->messages++;
    if (level == PEGAN_LOG_LEVEL_INFO) {
        record->info_messages++;
    }
    if (strstr(message, "training stage") != NULL) {
        record->saw_stage_message = 1;
    }
    pthread_mutex_unlock(&record->lock);
}

static void test_context(void) {
    PeganContext *context = NULL;
    EXPECT_STATUS(pegan_context_new(NULL, &context), PEGAN_STATUS_OK);
    CHECK(context != NULL);
    CHECK(strcmp(pegan_last_error_message(), "") == 0);
    pegan_context_free(context);

    PeganContextOptions options;
    memset(&options, 0, sizeof options);
    options.device = "cpu";
    options.num_threads = 2;
    EXPECT_STATUS(pegan_context_new(&options, &context), PEGAN_STATUS_OK);
    pegan_context_free(context);

    EXPECT_STATUS(pegan_context_new(&options, NULL), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("out_context");

    context = (PeganContext *)&options; /* any non-NULL value: a failed call must reset it */
    options.device = "tpu";
    EXPECT_STATUS(pegan_context_new(&options, &context), PEGAN_STATUS_DEVICE);
    EXPECT_MESSAGE("tpu");
    CHECK(context == NULL);

    /* The tests build the library without the cuda feature, so CUDA is unavailable. */
    options.device = "cuda:0";
    EXPECT_STATUS(pegan_context_new(&options, &context), PEGAN_STATUS_DEVICE);
    EXPECT_MESSAGE("cuda:0");

    options.device = "cpu";
    options.log_callback = log_to_record;
    options.max_log_level = 9;
    EXPECT_STATUS(pegan_context_new(&options, &context), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("max_log_level 9");

    pegan_context_free(NULL);
}

/* ---- image files ---- */

static void test_image_files(const char *image_path, const PeganImage *balloons) {
    char path[4200];
    uint8_t pixel[3];
    PeganImage image = image_of(1, 1, 3, PEGAN_SAMPLE_TYPE_U8, 3, pixel); /* a failed load must zero it */

    EXPECT_STATUS(pegan_image_load(NULL, &image), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("path");
    CHECK(image.data == NULL);
    EXPECT_STATUS(pegan_image_load(image_path, NULL), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("out_image");

    scratch_path(path, sizeof path, "missing.png");
    EXPECT_STATUS(pegan_image_load(path, &image), PEGAN_STATUS_IO);
    EXPECT_MESSAGE("missing.png");

    scratch_path(path, sizeof path, "not-an-image.png");
    CHECK(write_file(path, "plain text", 10));
    EXPECT_STATUS(pegan_image_load(path, &image), PEGAN_STATUS_IO);
    EXPECT_MESSAGE("not-an-image.png");

    scratch_path(path, sizeof path, "copy.png");
    EXPECT_STATUS(pegan_image_save_png(path, balloons, image_bytes(balloons)), PEGAN_STATUS_OK);
    EXPECT_STATUS(pegan_image_load(path, &image), PEGAN_STATUS_OK);
    CHECK(image.width == balloons->width);
    CHECK(image.height == balloons->height);
    CHECK(image.channels == 3);
    CHECK(image.data != NULL);
    if (image.data != NULL) {
        CHECK(memcmp(image.data, balloons->data, image_bytes(balloons)) == 0);
    }
    pegan_image_free(&image);
    CHECK(image.data == NULL);
    pegan_image_free(&image);
    pegan_image_free(NULL);

    EXPECT_STATUS(pegan_image_save_png(NULL, balloons, image_bytes(balloons)), PEGAN_STATUS_NULL_POINTER);
    EXPECT_STATUS(pegan_image_save_png(path, NULL, 0), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("image");
    EXPECT_STATUS(pegan_image_save_png(path, balloons, image_bytes(balloons) - 1), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("bytes");
    scratch_path(path, sizeof path, "no-such-folder/out.png");
    EXPECT_STATUS(pegan_image_save_png(path, balloons, image_bytes(balloons)), PEGAN_STATUS_IO);
    EXPECT_MESSAGE("no-such-folder");
}

/* ---- training ---- */

typedef struct ProgressRecord {
    int calls;
    int finished_reports;
    /* Stage whose first report cancels training, or -1 for none. */
    int cancel_at_stage;
    /* Stage whose stage_finished report cancels training, or -1 for none. */
    int cancel_after_stage;
    unsigned last_stage;
    unsigned num_stages;
    unsigned iterations_per_stage;
    int fields_valid;
} ProgressRecord;

static int record_progress(const PeganTrainProgress *progress, void *user_data) {
    ProgressRecord *record = (ProgressRecord *)user_data;
    record->calls++;
    record->finished_reports += progress->stage_finished;
    record->last_stage = progress->stage;
    record->num_stages = progress->num_stages;
    record->iterations_per_stage = progress->iterations_per_stage;
    if (progress->stage >= progress->num_stages || progress->iteration < 1 ||
        progress->iteration > progress->iterations_per_stage || !isfinite(progress->loss_d) ||
        !isfinite(progress->loss_recon) || progress->elapsed_seconds < 0.0) {
        record->fields_valid = 0;
    }
    if (progress->stage_finished) {
        return record->cancel_after_stage >= 0 && progress->stage == (unsigned)record->cancel_after_stage;
    }
    return record->cancel_at_stage >= 0 && progress->stage == (unsigned)record->cancel_at_stage;
}

static PeganTrainOptions train_options(const char *config, ProgressRecord *record) {
    PeganTrainOptions options;
    memset(&options, 0, sizeof options);
    options.config_json = config;
    options.seed = 1;
    if (record != NULL) {
        options.progress_callback = record_progress;
        options.progress_user_data = record;
    }
    return options;
}

/* Reads an integer value of `key` from the model's JSON description, or returns -1. */
static long info_number(const PeganSinGanModel *model, const char *key) {
    char *json = NULL;
    char pattern[64];
    long value = -1;
    if (pegan_singan_model_info_json(model, &json) != PEGAN_STATUS_OK) {
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

static void test_train_bad_input(const PeganContext *context, const PeganImage *balloons) {
    size_t len = image_bytes(balloons);
    PeganTrainOptions options = train_options(tiny_config, NULL);
    PeganSinGanModel *model = (PeganSinGanModel *)&options; /* any non-NULL value */
    PeganImage image;

    EXPECT_STATUS(pegan_singan_train(NULL, balloons, len, &options, &model), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("context");
    CHECK(model == NULL);
    EXPECT_STATUS(pegan_singan_train(context, NULL, len, &options, &model), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("image");
    EXPECT_STATUS(pegan_singan_train(context, balloons, len, NULL, &model), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("options");
    EXPECT_STATUS(pegan_singan_train(context, balloons, len, &options, NULL), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("out_model");

    options.config_json = NULL;
    EXPECT_STATUS(pegan_singan_train(context, balloons, len, &options, &model), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("config_json");
    options.config_json = tiny_config;

    image = *balloons;
    image.data = NULL;
    EXPECT_STATUS(pegan_singan_train(context, &image, len, &options, &model), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("image->data");

    image = *balloons;
    image.width = 0;
    EXPECT_STATUS(pegan_singan_train(context, &image, len, &options, &model), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("0 x 186");

    image = *balloons;
    image.height = 0;
    EXPECT_STATUS(pegan_singan_train(context, &image, len, &options, &model), PEGAN_STATUS_INVALID_ARGUMENT);

    image = *balloons;
    image.channels = 2;
    EXPECT_STATUS(pegan_singan_train(context, &image, len, &options, &model), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("channels is 2");

    image = *balloons;
    image.row_stride = image.width * 3 - 1;
    EXPECT_STATUS(pegan_singan_train(context, &image, len, &options, &model), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("row_stride 743");

    EXPECT_STATUS(pegan_singan_train(context, balloons, len - 1, &options, &model), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("has 138383 bytes");
    EXPECT_STATUS(pegan_singan_train(context, balloons, 0, &options, &model), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("has 0 bytes");

    image = *balloons;
    image.sample_type = 7;
    EXPECT_STATUS(pegan_singan_train(context, &image, len, &options, &model), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("sample_type 7");

    /* Sides are checked against the limit before the buffer length. */
    image = *balloons;
    image.width = 20000;
    image.row_stride = 60000;
    EXPECT_STATUS(pegan_singan_train(context, &image, len, &options, &model), PEGAN_STATUS_TOO_LARGE);
    EXPECT_MESSAGE("20000");

    image = *balloons;
    image.width = 2;
    image.height = 2;
    image.row_stride = (size_t)-1;
    EXPECT_STATUS(pegan_singan_train(context, &image, len, &options, &model), PEGAN_STATUS_TOO_LARGE);
    EXPECT_MESSAGE("size_t");

    /* 8 x 8 pixels is below the tiny preset's 12-pixel coarsest stage. */
    image = *balloons;
    image.width = 8;
    image.height = 8;
    EXPECT_STATUS(pegan_singan_train(context, &image, len, &options, &model), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("too small");

    const char *bad_configs[][2] = {
        {"{\"variant\": ", "not valid JSON"},
        {"[1, 2]", "JSON object"},
        {"{\"variant\": \"tpu\", \"preset\": \"tiny\"}", "tpu"},
        {"{\"variant\": \"csg\", \"preset\": \"slow\"}", "slow"},
        {"{\"preset\": \"tiny\"}", "variant"},
        {"{\"variant\": \"csg\", \"preset\": \"tiny\", \"seed\": 3}", "seed"},
        {"{\"variant\": \"csg\", \"preset\": \"tiny\", \"overrides\": {\"train\": {\"iters_per_scale\": 0}}}",
         "iters_per_scale"},
        {"{\"config\": {\"variant\": \"csg\"}}", "config"},
    };
    for (size_t i = 0; i < sizeof bad_configs / sizeof bad_configs[0]; i++) {
        options.config_json = bad_configs[i][0];
        EXPECT_STATUS(pegan_singan_train(context, balloons, len, &options, &model), PEGAN_STATUS_INVALID_ARGUMENT);
        EXPECT_MESSAGE(bad_configs[i][1]);
        CHECK(model == NULL);
    }
}

/* Trains once with 16-bit RGBA and once with float grey samples, each on a padded stride. */
static void test_train_sample_types(const PeganContext *context, const PeganImage *balloons) {
    uint32_t width = balloons->width;
    uint32_t height = balloons->height;
    const uint8_t *rgb = (const uint8_t *)balloons->data;

    size_t stride16 = (size_t)width * 4 * sizeof(uint16_t) + 8;
    uint16_t *rgba16 = (uint16_t *)calloc(height, stride16);
    size_t stride32 = (size_t)width * sizeof(float) + 4;
    float *grey32 = (float *)calloc(height, stride32);
    CHECK(rgba16 != NULL);
    CHECK(grey32 != NULL);
    if (rgba16 == NULL || grey32 == NULL) {
        free(rgba16);
        free(grey32);
        return;
    }
    for (uint32_t y = 0; y < height; y++) {
        uint16_t *row16 = (uint16_t *)((uint8_t *)rgba16 + y * stride16);
        float *row32 = (float *)((uint8_t *)grey32 + y * stride32);
        for (uint32_t x = 0; x < width; x++) {
            const uint8_t *pixel = rgb + (size_t)y * balloons->row_stride + (size_t)x * 3;
            for (int c = 0; c < 3; c++) {
                row16[x * 4 + c] = (uint16_t)(pixel[c] * 257);
            }
            row16[x * 4 + 3] = 65535;
            row32[x] = (0.299f * pixel[0] + 0.587f * pixel[1] + 0.114f * pixel[2]) / 255.0f;
        }
    }

    PeganTrainOptions options = train_options(one_iteration_config, NULL);
    PeganSinGanModel *model = NULL;
    PeganImage image16 = image_of(width, height, 4, PEGAN_SAMPLE_TYPE_U16, stride16, rgba16);
    EXPECT_STATUS(pegan_singan_train(context, &image16, height * stride16, &options, &model), PEGAN_STATUS_OK);
    CHECK(model != NULL);
    CHECK(info_number(model, "finished_stages") == info_number(model, "num_stages"));
    pegan_singan_model_free(model);

    model = NULL;
    PeganImage image32 = image_of(width, height, 1, PEGAN_SAMPLE_TYPE_F32, stride32, grey32);
    EXPECT_STATUS(pegan_singan_train(context, &image32, height * stride32, &options, &model), PEGAN_STATUS_OK);
    CHECK(model != NULL);
    pegan_singan_model_free(model);

    free(rgba16);
    free(grey32);
}

static void test_train_cancel(const PeganContext *context, const PeganImage *balloons) {
    char path[4200];
    size_t len = image_bytes(balloons);

    /* Cancel on the first report of stage 1: stage 0 is finished and kept. */
    ProgressRecord record = {.cancel_at_stage = 1, .cancel_after_stage = -1, .fields_valid = 1};
    PeganTrainOptions options = train_options(tiny_config, &record);
    PeganSinGanModel *model = NULL;
    EXPECT_STATUS(pegan_singan_train(context, balloons, len, &options, &model), PEGAN_STATUS_CANCELLED);
    EXPECT_MESSAGE("1 of");
    CHECK(model != NULL);
    CHECK(record.last_stage == 1);
    /* Every iteration of stage 0, its stage_finished report and the first report of stage 1. */
    CHECK(record.calls == (int)record.iterations_per_stage + 2);
    CHECK(record.finished_reports == 1);
    CHECK(info_number(model, "finished_stages") == 1);

    uint8_t pixel[3];
    PeganImage out = image_of(1, 1, 3, PEGAN_SAMPLE_TYPE_U8, 3, pixel);
    PeganGenerateOptions generate;
    memset(&generate, 0, sizeof generate);
    generate.width = 1;
    generate.height = 1;
    EXPECT_STATUS(pegan_singan_generate(model, &generate, &out, sizeof pixel), PEGAN_STATUS_INCOMPLETE_MODEL);
    EXPECT_MESSAGE("finished 1 of");

    /* A partly trained model saves and loads with its finished stages. */
    scratch_path(path, sizeof path, "partial.pegan");
    EXPECT_STATUS(pegan_singan_model_save(model, path), PEGAN_STATUS_OK);
    pegan_singan_model_free(model);
    model = NULL;
    EXPECT_STATUS(pegan_singan_model_load(context, path, &model), PEGAN_STATUS_OK);
    CHECK(info_number(model, "finished_stages") == 1);
    pegan_singan_model_free(model);

    /* Cancel on the stage_finished report of stage 0: stage 0 is kept, stage 1 never starts. */
    ProgressRecord after = {.cancel_at_stage = -1, .cancel_after_stage = 0, .fields_valid = 1};
    options = train_options(tiny_config, &after);
    model = NULL;
    EXPECT_STATUS(pegan_singan_train(context, balloons, len, &options, &model), PEGAN_STATUS_CANCELLED);
    CHECK(after.calls == (int)after.iterations_per_stage + 1);
    CHECK(after.last_stage == 0);
    CHECK(model != NULL);
    CHECK(info_number(model, "finished_stages") == 1);
    pegan_singan_model_free(model);

    /* Cancel on the very first report: no stage is finished, and the model still comes back. */
    ProgressRecord first = {.cancel_at_stage = 0, .cancel_after_stage = -1, .fields_valid = 1};
    options = train_options(tiny_config, &first);
    model = NULL;
    EXPECT_STATUS(pegan_singan_train(context, balloons, len, &options, &model), PEGAN_STATUS_CANCELLED);
    CHECK(first.calls == 1);
    CHECK(model != NULL);
    CHECK(info_number(model, "finished_stages") == 0);
    pegan_singan_model_free(model);
}

static PeganSinGanModel *test_train(const PeganContext *context, const PeganImage *balloons, LogRecord *log) {
    ProgressRecord record = {.cancel_at_stage = -1, .cancel_after_stage = -1, .fields_valid = 1};
    PeganTrainOptions options = train_options(tiny_config, &record);
    PeganSinGanModel *model = NULL;
    EXPECT_STATUS(pegan_singan_train(context, balloons, image_bytes(balloons), &options, &model), PEGAN_STATUS_OK);
    CHECK(model != NULL);
    CHECK(record.fields_valid);
    CHECK(record.num_stages >= 2);
    CHECK(record.calls == (int)(record.num_stages * (record.iterations_per_stage + 1)));
    CHECK(record.finished_reports == (int)record.num_stages);
    CHECK(info_number(model, "num_stages") == (long)record.num_stages);
    CHECK(info_number(model, "finished_stages") == (long)record.num_stages);
    CHECK(info_number(model, "seed") == 1);
    CHECK(log->info_messages > 0);
    CHECK(log->saw_stage_message);
    return model;
}

/* ---- model files ---- */

/* Writes a safetensors file whose pegan metadata names another model kind. */
static int write_wrong_kind_model(const char *path) {
    const char *header = "{\"__metadata__\":{\"pegan\":\"{\\\"format_version\\\":1,\\\"kind\\\":\\\"stylegan2\\\"}\"}}";
    size_t header_len = strlen(header);
    uint8_t bytes[256];
    if (header_len + 8 > sizeof bytes) {
        return 0;
    }
    for (int i = 0; i < 8; i++) {
        bytes[i] = (uint8_t)((uint64_t)header_len >> (8 * i)); /* little-endian u64 header length */
    }
    memcpy(bytes + 8, header, header_len);
    return write_file(path, bytes, header_len + 8);
}

static void test_model_files(const PeganContext *context, const PeganSinGanModel *model, const char *image_path) {
    char path[4200];
    PeganSinGanModel *loaded = NULL;
    void *bytes = NULL;
    size_t bytes_len = 0;

    scratch_path(path, sizeof path, "model.pegan");
    EXPECT_STATUS(pegan_singan_model_save(model, path), PEGAN_STATUS_OK);
    EXPECT_STATUS(pegan_singan_model_load(context, path, &loaded), PEGAN_STATUS_OK);
    CHECK(loaded != NULL);
    CHECK(info_number(loaded, "num_stages") == info_number(model, "num_stages"));
    pegan_singan_model_free(loaded);

    EXPECT_STATUS(pegan_singan_model_save_to_memory(model, &bytes, &bytes_len), PEGAN_STATUS_OK);
    CHECK(bytes != NULL);
    CHECK(bytes_len > 8);
    loaded = NULL;
    EXPECT_STATUS(pegan_singan_model_load_from_memory(context, bytes, bytes_len, &loaded), PEGAN_STATUS_OK);
    CHECK(loaded != NULL);
    pegan_singan_model_free(loaded);

    /* Bad input to load. */
    loaded = (PeganSinGanModel *)&bytes; /* any non-NULL value */
    EXPECT_STATUS(pegan_singan_model_load(NULL, path, &loaded), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("context");
    CHECK(loaded == NULL);
    EXPECT_STATUS(pegan_singan_model_load(context, NULL, &loaded), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("path");
    EXPECT_STATUS(pegan_singan_model_load(context, path, NULL), PEGAN_STATUS_NULL_POINTER);
    EXPECT_STATUS(pegan_singan_model_load(context, "", &loaded), PEGAN_STATUS_INVALID_ARGUMENT);

    scratch_path(path, sizeof path, "missing.pegan");
    EXPECT_STATUS(pegan_singan_model_load(context, path, &loaded), PEGAN_STATUS_IO);
    EXPECT_MESSAGE("missing.pegan");

    scratch_path(path, sizeof path, "garbage.pegan");
    CHECK(write_file(path, "this is not a model file at all", 31));
    EXPECT_STATUS(pegan_singan_model_load(context, path, &loaded), PEGAN_STATUS_INVALID_MODEL);
    EXPECT_MESSAGE("garbage.pegan");

    scratch_path(path, sizeof path, "truncated.pegan");
    CHECK(write_file(path, bytes, bytes_len / 2));
    EXPECT_STATUS(pegan_singan_model_load(context, path, &loaded), PEGAN_STATUS_INVALID_MODEL);
    EXPECT_MESSAGE("truncated.pegan");

    scratch_path(path, sizeof path, "stylegan2.pegan");
    CHECK(write_wrong_kind_model(path));
    EXPECT_STATUS(pegan_singan_model_load(context, path, &loaded), PEGAN_STATUS_INVALID_MODEL);
    EXPECT_MESSAGE("stylegan2");

    EXPECT_STATUS(pegan_singan_model_load(context, image_path, &loaded), PEGAN_STATUS_INVALID_MODEL);
    CHECK(loaded == NULL);

    EXPECT_STATUS(pegan_singan_model_load_from_memory(NULL, bytes, bytes_len, &loaded), PEGAN_STATUS_NULL_POINTER);
    EXPECT_STATUS(pegan_singan_model_load_from_memory(context, NULL, bytes_len, &loaded), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("data");
    EXPECT_STATUS(pegan_singan_model_load_from_memory(context, bytes, bytes_len, NULL), PEGAN_STATUS_NULL_POINTER);
    EXPECT_STATUS(pegan_singan_model_load_from_memory(context, bytes, 0, &loaded), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("data_len is 0");
    EXPECT_STATUS(pegan_singan_model_load_from_memory(context, bytes, bytes_len - 1, &loaded),
                  PEGAN_STATUS_INVALID_MODEL);
    CHECK(loaded == NULL);
    pegan_buffer_free(bytes);
    pegan_buffer_free(NULL);

    /* Bad input to save. */
    scratch_path(path, sizeof path, "no-such-folder/model.pegan");
    EXPECT_STATUS(pegan_singan_model_save(model, path), PEGAN_STATUS_IO);
    EXPECT_MESSAGE("no-such-folder");
    EXPECT_STATUS(pegan_singan_model_save(NULL, path), PEGAN_STATUS_NULL_POINTER);
    EXPECT_STATUS(pegan_singan_model_save(model, NULL), PEGAN_STATUS_NULL_POINTER);

    bytes = &bytes;
    bytes_len = 7;
    EXPECT_STATUS(pegan_singan_model_save_to_memory(NULL, &bytes, &bytes_len), PEGAN_STATUS_NULL_POINTER);
    CHECK(bytes == NULL);
    CHECK(bytes_len == 0);
    EXPECT_STATUS(pegan_singan_model_save_to_memory(model, NULL, &bytes_len), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("out_data");
    EXPECT_STATUS(pegan_singan_model_save_to_memory(model, &bytes, NULL), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("out_len");

    /* Info and size. */
    char *json = NULL;
    EXPECT_STATUS(pegan_singan_model_info_json(model, &json), PEGAN_STATUS_OK);
    CHECK(json != NULL);
    if (json != NULL) {
        CHECK(strstr(json, "\"kind\":\"singan\"") != NULL);
        CHECK(strstr(json, "\"complete\":true") != NULL);
    }
    pegan_string_free(json);
    pegan_string_free(NULL);
    EXPECT_STATUS(pegan_singan_model_info_json(NULL, &json), PEGAN_STATUS_NULL_POINTER);
    CHECK(json == NULL);
    EXPECT_STATUS(pegan_singan_model_info_json(model, NULL), PEGAN_STATUS_NULL_POINTER);

    uint32_t width = 0;
    uint32_t height = 0;
    EXPECT_STATUS(pegan_singan_model_trained_size(model, &width, &height), PEGAN_STATUS_OK);
    CHECK(width == (uint32_t)info_number(model, "width"));
    CHECK(height == (uint32_t)info_number(model, "height"));
    CHECK(width > 0);
    CHECK(height > 0);
    EXPECT_STATUS(pegan_singan_model_trained_size(NULL, &width, &height), PEGAN_STATUS_NULL_POINTER);
    CHECK(width == 0);
    CHECK(height == 0);
    EXPECT_STATUS(pegan_singan_model_trained_size(model, NULL, &height), PEGAN_STATUS_NULL_POINTER);
    EXPECT_STATUS(pegan_singan_model_trained_size(model, &width, NULL), PEGAN_STATUS_NULL_POINTER);

    pegan_singan_model_free(NULL);
}

/* ---- generation ---- */

static PeganGenerateOptions generate_options(uint32_t width, uint32_t height, uint64_t seed) {
    PeganGenerateOptions options;
    memset(&options, 0, sizeof options);
    options.width = width;
    options.height = height;
    options.seed = seed;
    return options;
}

/* Generates an 8-bit RGB image into a new buffer; returns NULL on failure. */
static uint8_t *generate_rgb8(const PeganSinGanModel *model, uint32_t width, uint32_t height, uint64_t seed) {
    uint8_t *pixels = (uint8_t *)malloc((size_t)width * height * 3);
    if (pixels == NULL) {
        return NULL;
    }
    PeganImage out = image_of(width, height, 3, PEGAN_SAMPLE_TYPE_U8, (size_t)width * 3, pixels);
    PeganGenerateOptions options = generate_options(width, height, seed);
    if (pegan_singan_generate(model, &options, &out, image_bytes(&out)) != PEGAN_STATUS_OK) {
        free(pixels);
        return NULL;
    }
    return pixels;
}

static void test_generate(const PeganSinGanModel *model, long num_stages) {
    uint32_t width = 0;
    uint32_t height = 0;
    EXPECT_STATUS(pegan_singan_model_trained_size(model, &width, &height), PEGAN_STATUS_OK);
    size_t pixels = (size_t)width * height;

    /* Defaults: a random sample at the trained size. */
    uint8_t *rgb = (uint8_t *)malloc(pixels * 3);
    PeganImage out = image_of(width, height, 3, PEGAN_SAMPLE_TYPE_U8, (size_t)width * 3, rgb);
    EXPECT_STATUS(pegan_singan_generate(model, NULL, &out, pixels * 3), PEGAN_STATUS_OK);
    int varied = 0;
    for (size_t i = 1; i < pixels * 3; i++) {
        varied |= rgb[i] != rgb[0];
    }
    CHECK(varied);

    /* One seed reproduces an image; another seed changes it. */
    uint8_t *same = generate_rgb8(model, width, height, 0);
    uint8_t *other = generate_rgb8(model, width, height, 1);
    CHECK(same != NULL);
    CHECK(other != NULL);
    if (same != NULL && other != NULL) {
        CHECK(memcmp(same, rgb, pixels * 3) == 0);
        CHECK(memcmp(other, rgb, pixels * 3) != 0);
    }
    free(same);
    free(other);

    /* Retargeting to twice the width. */
    uint8_t *wide = generate_rgb8(model, width * 2, height, 3);
    CHECK(wide != NULL);
    free(wide);

    /* 16-bit RGBA with padded rows and a guard area after the image: padding and guard stay intact. */
    size_t stride16 = (size_t)width * 4 * 2 + 8;
    size_t size16 = stride16 * (height - 1) + (size_t)width * 4 * 2;
    size_t guard = 64;
    uint8_t *buffer16 = (uint8_t *)malloc(size16 + guard);
    memset(buffer16, 0xAB, size16 + guard);
    PeganImage out16 = image_of(width, height, 4, PEGAN_SAMPLE_TYPE_U16, stride16, buffer16);
    EXPECT_STATUS(pegan_singan_generate(model, NULL, &out16, size16 + guard), PEGAN_STATUS_OK);
    int padding_intact = 1;
    int alpha_opaque = 1;
    int matches_rgb8 = 1;
    for (uint32_t y = 0; y < height; y++) {
        const uint16_t *row = (const uint16_t *)(buffer16 + y * stride16);
        for (uint32_t x = 0; x < width; x++) {
            alpha_opaque &= row[x * 4 + 3] == 65535;
            for (int c = 0; c < 3; c++) {
                int as8 = (int)lround(row[x * 4 + c] / 257.0);
                matches_rgb8 &= abs(as8 - rgb[((size_t)y * width + x) * 3 + c]) <= 1;
            }
        }
        if (y + 1 < height) {
            for (size_t i = (size_t)width * 8; i < stride16; i++) {
                padding_intact &= buffer16[y * stride16 + i] == 0xAB;
            }
        }
    }
    for (size_t i = size16; i < size16 + guard; i++) {
        padding_intact &= buffer16[i] == 0xAB;
    }
    CHECK(padding_intact);
    CHECK(alpha_opaque);
    CHECK(matches_rgb8);
    free(buffer16);

    /* Float grey: the luma of the RGB image, within [0, 1]. */
    float *grey = (float *)malloc(pixels * sizeof(float));
    PeganImage out_grey = image_of(width, height, 1, PEGAN_SAMPLE_TYPE_F32, (size_t)width * sizeof(float), grey);
    EXPECT_STATUS(pegan_singan_generate(model, NULL, &out_grey, pixels * sizeof(float)), PEGAN_STATUS_OK);
    int in_range = 1;
    int is_luma = 1;
    for (size_t i = 0; i < pixels; i++) {
        float luma = (0.299f * rgb[i * 3] + 0.587f * rgb[i * 3 + 1] + 0.114f * rgb[i * 3 + 2]) / 255.0f;
        in_range &= grey[i] >= 0.0f && grey[i] <= 1.0f;
        is_luma &= fabsf(grey[i] - luma) < 0.01f;
    }
    CHECK(in_range);
    CHECK(is_luma);
    free(grey);

    /* Reconstruction works at the trained size only; start stages must exist. */
    PeganGenerateOptions options = generate_options(0, 0, 0);
    options.noise_mode = PEGAN_NOISE_MODE_RECONSTRUCTION;
    EXPECT_STATUS(pegan_singan_generate(model, &options, &out, pixels * 3), PEGAN_STATUS_OK);
    options.width = width + 1;
    size_t wider_len = (size_t)(width + 1) * height * 3;
    uint8_t *wider = (uint8_t *)malloc(wider_len);
    PeganImage out_wider = image_of(width + 1, height, 3, PEGAN_SAMPLE_TYPE_U8, (size_t)(width + 1) * 3, wider);
    EXPECT_STATUS(pegan_singan_generate(model, &options, &out_wider, wider_len), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("reconstruction");
    free(wider);
    options = generate_options(0, 0, 5);
    options.start_stage = 1;
    EXPECT_STATUS(pegan_singan_generate(model, &options, &out, pixels * 3), PEGAN_STATUS_OK);
    options.start_stage = (uint32_t)num_stages;
    EXPECT_STATUS(pegan_singan_generate(model, &options, &out, pixels * 3), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("start stage");
    options = generate_options(0, 0, 0);
    options.noise_mode = 9;
    EXPECT_STATUS(pegan_singan_generate(model, &options, &out, pixels * 3), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("noise_mode 9");

    /* Bad output images. */
    PeganImage bad;
    EXPECT_STATUS(pegan_singan_generate(NULL, NULL, &out, pixels * 3), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("model");
    EXPECT_STATUS(pegan_singan_generate(model, NULL, NULL, pixels * 3), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("out");
    bad = out;
    bad.data = NULL;
    EXPECT_STATUS(pegan_singan_generate(model, NULL, &bad, pixels * 3), PEGAN_STATUS_NULL_POINTER);
    EXPECT_MESSAGE("out->data");
    bad = out;
    bad.width = width - 1;
    EXPECT_STATUS(pegan_singan_generate(model, NULL, &bad, pixels * 3), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("requested size");
    bad = out;
    bad.width = 0;
    EXPECT_STATUS(pegan_singan_generate(model, NULL, &bad, pixels * 3), PEGAN_STATUS_INVALID_ARGUMENT);
    bad = out;
    bad.row_stride = (size_t)width * 3 - 1;
    EXPECT_STATUS(pegan_singan_generate(model, NULL, &bad, pixels * 3), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("row_stride");
    EXPECT_STATUS(pegan_singan_generate(model, NULL, &out, pixels * 3 - 1), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("bytes");
    EXPECT_STATUS(pegan_singan_generate(model, NULL, &out, 0), PEGAN_STATUS_INVALID_ARGUMENT);
    bad = out;
    bad.sample_type = 3;
    EXPECT_STATUS(pegan_singan_generate(model, NULL, &bad, pixels * 3), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("sample_type 3");
    bad = out;
    bad.channels = 5;
    EXPECT_STATUS(pegan_singan_generate(model, NULL, &bad, pixels * 3), PEGAN_STATUS_INVALID_ARGUMENT);
    EXPECT_MESSAGE("channels is 5");
    bad = out;
    bad.row_stride = (size_t)-1;
    EXPECT_STATUS(pegan_singan_generate(model, NULL, &bad, pixels * 3), PEGAN_STATUS_TOO_LARGE);

    options = generate_options(70000, 0, 0);
    bad = image_of(70000, height, 3, PEGAN_SAMPLE_TYPE_U8, 210000, rgb);
    EXPECT_STATUS(pegan_singan_generate(model, &options, &bad, pixels * 3), PEGAN_STATUS_TOO_LARGE);
    EXPECT_MESSAGE("70000");
    options = generate_options(0, 0, 0);
    options.memory_limit_bytes = 1;
    EXPECT_STATUS(pegan_singan_generate(model, &options, &out, pixels * 3), PEGAN_STATUS_TOO_LARGE);
    EXPECT_MESSAGE("memory");

    free(rgb);
}

/* ---- threads ---- */

typedef struct GenerateJob {
    const PeganSinGanModel *model;
    uint32_t width;
    uint32_t height;
    uint64_t seeds[3];
    uint8_t *results[3];
    int all_ok;
    int own_message;
} GenerateJob;

static void *generate_job(void *argument) {
    GenerateJob *job = (GenerateJob *)argument;
    job->all_ok = 1;
    for (int i = 0; i < 3; i++) {
        job->results[i] = generate_rgb8(job->model, job->width, job->height, job->seeds[i]);
        job->all_ok &= job->results[i] != NULL;
    }
    /* Error messages are per thread: this thread's error names this thread's bad value. */
    uint8_t pixel[3];
    PeganSampleType bad_type = 40 + (PeganSampleType)job->seeds[0];
    PeganImage out = image_of(1, 1, 3, bad_type, 3, pixel);
    char expected[32];
    snprintf(expected, sizeof expected, "sample_type %u", (unsigned)bad_type);
    job->own_message = pegan_singan_generate(job->model, NULL, &out, sizeof pixel) == PEGAN_STATUS_INVALID_ARGUMENT &&
                       strstr(pegan_last_error_message(), expected) != NULL;
    return NULL;
}

static void test_threads(const PeganSinGanModel *model) {
    uint32_t width = 0;
    uint32_t height = 0;
    EXPECT_STATUS(pegan_singan_model_trained_size(model, &width, &height), PEGAN_STATUS_OK);

    /* The main thread's error message must survive the other threads' calls. */
    EXPECT_STATUS(pegan_singan_generate(NULL, NULL, NULL, 0), PEGAN_STATUS_NULL_POINTER);

    GenerateJob jobs[2] = {
        {.model = model, .width = width * 2, .height = height, .seeds = {10, 11, 12}},
        {.model = model, .width = width * 2, .height = height, .seeds = {20, 21, 22}},
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
        CHECK(jobs[t].all_ok);
        CHECK(jobs[t].own_message);
        for (int i = 0; i < 3; i++) {
            uint8_t *alone = generate_rgb8(model, jobs[t].width, jobs[t].height, jobs[t].seeds[i]);
            CHECK(alone != NULL);
            if (alone != NULL && jobs[t].results[i] != NULL) {
                CHECK(memcmp(alone, jobs[t].results[i], (size_t)jobs[t].width * jobs[t].height * 3) == 0);
            }
            free(alone);
            free(jobs[t].results[i]);
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s IMAGE.png SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    const char *image_path = argv[1];
    snprintf(scratch_dir, sizeof scratch_dir, "%s", argv[2]);

    test_versions();
    test_context();

    PeganImage balloons;
    if (pegan_image_load(image_path, &balloons) != PEGAN_STATUS_OK) {
        fprintf(stderr, "cannot load %s: %s\n", image_path, pegan_last_error_message());
        return 1;
    }
    test_image_files(image_path, &balloons);

    LogRecord log;
    memset(&log, 0, sizeof log);
    pthread_mutex_init(&log.lock, NULL);
    PeganContextOptions options;
    memset(&options, 0, sizeof options);
    options.device = "cpu";
    options.log_callback = log_to_record;
    options.log_user_data = &log;
    PeganContext *context = NULL;
    EXPECT_STATUS(pegan_context_new(&options, &context), PEGAN_STATUS_OK);

    test_train_bad_input(context, &balloons);
    PeganSinGanModel *model = test_train(context, &balloons, &log);
    test_train_cancel(context, &balloons);
    test_train_sample_types(context, &balloons);

    /* Models keep what they need of their context, which may go first. */
    pegan_context_free(context);
    PeganContext *second = NULL;
    EXPECT_STATUS(pegan_context_new(NULL, &second), PEGAN_STATUS_OK);

    if (model != NULL) {
        long num_stages = info_number(model, "num_stages");
        test_model_files(second, model, image_path);
        test_generate(model, num_stages);
        test_threads(model);
    }

    pegan_singan_model_free(model);
    pegan_context_free(second);
    pegan_image_free(&balloons);
    pthread_mutex_destroy(&log.lock);

    return check_summary();
}
