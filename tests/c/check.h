/*
 * Checks and helpers shared by the C API test programs (test_capi.c, test_stylegan2.c). Each
 * program includes this file once, records every check in `passed` and `failed`, and ends with
 * check_summary().
 */
#ifndef PEGAN_TEST_CHECK_H
#define PEGAN_TEST_CHECK_H

#include <pegan.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed;
static int failed;

static inline void record_check(int ok, int line, const char *what) {
    if (ok) {
        passed++;
    } else {
        failed++;
        fprintf(stderr, "FAIL line %d: %s\n", line, what);
    }
}

#define CHECK(condition) record_check((condition) != 0, __LINE__, #condition)

static inline void record_status(PeganStatus got, PeganStatus expected, int line, const char *call) {
    if (got == expected) {
        passed++;
    } else {
        failed++;
        fprintf(stderr, "FAIL line %d: %s returned %s, expected %s; message: %s\n", line, call,
                pegan_status_name((int)got), pegan_status_name((int)expected), pegan_last_error_message());
    }
}

/* Checks the status of a call; the call's message stays readable with pegan_last_error_message(). */
#define EXPECT_STATUS(call, expected) record_status((call), (expected), __LINE__, #call)

static inline void record_message(const char *needle, int line) {
    const char *message = pegan_last_error_message();
    if (strstr(message, needle) != NULL) {
        passed++;
    } else {
        failed++;
        fprintf(stderr, "FAIL line %d: last error message lacks \"%s\": %s\n", line, needle, message);
    }
}

/* Checks that the last error message contains `needle`, such as the name of the bad value. */
#define EXPECT_MESSAGE(needle) record_message((needle), __LINE__)

static char scratch_dir[4096];

static inline void scratch_path(char *out, size_t size, const char *name) {
    snprintf(out, size, "%s/%s", scratch_dir, name);
}

static inline int write_file(const char *path, const void *data, size_t len) {
    FILE *file = fopen(path, "wb");
    if (file == NULL) {
        return 0;
    }
    size_t written = fwrite(data, 1, len, file);
    return fclose(file) == 0 && written == len;
}

static inline PeganImage image_of(uint32_t width, uint32_t height, uint32_t channels, PeganSampleType sample_type,
                           size_t row_stride, void *data) {
    PeganImage image;
    memset(&image, 0, sizeof image);
    image.width = width;
    image.height = height;
    image.channels = channels;
    image.row_stride = row_stride;
    image.sample_type = sample_type;
    image.data = data;
    return image;
}

static inline size_t image_bytes(const PeganImage *image) {
    return image->row_stride * image->height;
}

/* Prints "N passed, N failed" and returns the exit status: 0 only when no check failed. */
static inline int check_summary(void) {
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}

#endif /* PEGAN_TEST_CHECK_H */
