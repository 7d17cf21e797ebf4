/*
 * Generates an image of any size from a trained SinGAN model with the pegan C API and writes it as PNG.
 *
 * Usage: retarget MODEL WIDTH HEIGHT OUTPUT.png [SEED [START_STAGE]]
 *   MODEL        model file written by the train example or the pegan command
 *   WIDTH        output width in pixels, or 0 for the trained width
 *   HEIGHT       output height in pixels, or 0 for the trained height
 *   SEED         seed of the random noise, default 0
 *   START_STAGE  first stage with random noise, default 0; higher values keep more of the training
 *                image's layout
 */
#include <pegan.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc < 5 || argc > 7) {
        fprintf(stderr, "usage: %s MODEL WIDTH HEIGHT OUTPUT.png [SEED [START_STAGE]]\n", argv[0]);
        return 2;
    }
    const char *model_path = argv[1];
    unsigned long width_argument = strtoul(argv[2], NULL, 10);
    unsigned long height_argument = strtoul(argv[3], NULL, 10);
    const char *output_path = argv[4];
    unsigned long long seed = argc > 5 ? strtoull(argv[5], NULL, 10) : 0;
    unsigned long start_stage = argc > 6 ? strtoul(argv[6], NULL, 10) : 0;
    if (width_argument > UINT32_MAX || height_argument > UINT32_MAX || start_stage > UINT32_MAX) {
        fprintf(stderr, "width, height and start stage must fit in 32 bits\n");
        return 2;
    }

    if (pegan_abi_version() != PEGAN_ABI_VERSION) {
        fprintf(stderr, "libpegan %s has ABI %u, but this program was built for ABI %d\n", pegan_version(),
                pegan_abi_version(), PEGAN_ABI_VERSION);
        return 1;
    }

    int exit_code = 1;
    PeganContext *context = NULL;
    PeganSinGanModel *model = NULL;
    uint8_t *pixels = NULL;

    if (pegan_context_new(NULL, &context) != PEGAN_STATUS_OK) {
        fprintf(stderr, "cannot create the context: %s\n", pegan_last_error_message());
        goto done;
    }
    if (pegan_singan_model_load(context, model_path, &model) != PEGAN_STATUS_OK) {
        fprintf(stderr, "cannot load the model: %s\n", pegan_last_error_message());
        goto done;
    }

    /* 0 stands for the trained size, which the output buffer needs to know. */
    uint32_t width = (uint32_t)width_argument;
    uint32_t height = (uint32_t)height_argument;
    uint32_t trained_width = 0;
    uint32_t trained_height = 0;
    pegan_singan_model_trained_size(model, &trained_width, &trained_height);
    if (width == 0) {
        width = trained_width;
    }
    if (height == 0) {
        height = trained_height;
    }

    size_t row_stride = (size_t)width * 3;
    if (height != 0 && row_stride > SIZE_MAX / height) {
        fprintf(stderr, "a %u x %u image does not fit in memory\n", width, height);
        goto done;
    }
    size_t buffer_len = row_stride * height;
    pixels = (uint8_t *)malloc(buffer_len > 0 ? buffer_len : 1);
    if (pixels == NULL) {
        fprintf(stderr, "cannot allocate %zu bytes for a %u x %u image\n", buffer_len, width, height);
        goto done;
    }

    PeganImage out = {0};
    out.width = width;
    out.height = height;
    out.channels = 3;
    out.row_stride = row_stride;
    out.sample_type = PEGAN_SAMPLE_TYPE_U8;
    out.data = pixels;

    PeganGenerateOptions options = {0};
    options.width = width;
    options.height = height;
    options.seed = seed;
    options.start_stage = (uint32_t)start_stage;
    options.noise_mode = PEGAN_NOISE_MODE_RANDOM;
    if (pegan_singan_generate(model, &options, &out, buffer_len) != PEGAN_STATUS_OK) {
        fprintf(stderr, "cannot generate the image: %s\n", pegan_last_error_message());
        goto done;
    }
    if (pegan_image_save_png(output_path, &out, buffer_len) != PEGAN_STATUS_OK) {
        fprintf(stderr, "cannot write the image: %s\n", pegan_last_error_message());
        goto done;
    }
    printf("wrote %s (%u x %u pixels, trained size %u x %u)\n", output_path, width, height, trained_width,
           trained_height);
    exit_code = 0;

done:
    free(pixels);
    pegan_singan_model_free(model);
    pegan_context_free(context);
    return exit_code;
}
