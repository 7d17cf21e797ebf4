/*
 * Samples one image from a StyleGAN2 / MS-PIE model with the pegan C API and writes it as PNG.
 *
 * Usage: stylegan2_sample MODEL OUTPUT.png [WIDTH HEIGHT [SEED [TRUNCATION]]]
 *   MODEL       pegan StyleGAN2 model file, or an MMGeneration StyleGAN2 checkpoint (.pth)
 *   WIDTH       output width in pixels, or 0 for the trained width (default). MS-PIE models generate
 *               the trained width plus any multiple of a quarter of it.
 *   HEIGHT      output height in pixels, or 0 for the trained height (default)
 *   SEED        seed of the latent and the noise maps, default 0
 *   TRUNCATION  truncation psi, default 1 (none); 0.7 gives more typical images
 */
#include <pegan.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 3 && (argc < 5 || argc > 7)) {
        fprintf(stderr, "usage: %s MODEL OUTPUT.png [WIDTH HEIGHT [SEED [TRUNCATION]]]\n", argv[0]);
        return 2;
    }
    const char *model_path = argv[1];
    const char *output_path = argv[2];
    unsigned long width_argument = argc > 3 ? strtoul(argv[3], NULL, 10) : 0;
    unsigned long height_argument = argc > 4 ? strtoul(argv[4], NULL, 10) : 0;
    unsigned long long seed = argc > 5 ? strtoull(argv[5], NULL, 10) : 0;
    double truncation = argc > 6 ? strtod(argv[6], NULL) : 1.0;
    if (width_argument > UINT32_MAX || height_argument > UINT32_MAX) {
        fprintf(stderr, "width and height must fit in 32 bits\n");
        return 2;
    }

    if (pegan_abi_version() != PEGAN_ABI_VERSION) {
        fprintf(stderr, "libpegan %s has ABI %u, but this program was built for ABI %d\n", pegan_version(),
                pegan_abi_version(), PEGAN_ABI_VERSION);
        return 1;
    }

    int exit_code = 1;
    PeganContext *context = NULL;
    PeganStyleGan2Model *model = NULL;
    uint8_t *pixels = NULL;

    if (pegan_context_new(NULL, &context) != PEGAN_STATUS_OK) {
        fprintf(stderr, "cannot create the context: %s\n", pegan_last_error_message());
        goto done;
    }
    /* A checkpoint of MS-PIE config e or j would need its preset name here, such as "config-e". */
    if (pegan_stylegan2_model_load(context, model_path, NULL, &model) != PEGAN_STATUS_OK) {
        fprintf(stderr, "cannot load the model: %s\n", pegan_last_error_message());
        goto done;
    }

    /* 0 stands for the trained size, which the output buffer needs to know. */
    PeganStyleGan2Info info;
    if (pegan_stylegan2_model_info(model, &info) != PEGAN_STATUS_OK) {
        fprintf(stderr, "cannot read the model's sizes: %s\n", pegan_last_error_message());
        goto done;
    }
    uint32_t width = width_argument == 0 ? info.width : (uint32_t)width_argument;
    uint32_t height = height_argument == 0 ? info.height : (uint32_t)height_argument;

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

    PeganStyleGan2SampleOptions options;
    pegan_stylegan2_sample_options_init(&options);
    options.width = width;
    options.height = height;
    options.seed = seed;
    options.truncation = truncation;
    if (pegan_stylegan2_generate(model, &options, &out, buffer_len) != PEGAN_STATUS_OK) {
        fprintf(stderr, "cannot generate the image: %s\n", pegan_last_error_message());
        goto done;
    }
    if (pegan_image_save_png(output_path, &out, buffer_len) != PEGAN_STATUS_OK) {
        fprintf(stderr, "cannot write the image: %s\n", pegan_last_error_message());
        goto done;
    }
    printf("wrote %s (%u x %u pixels; the model generates %u + k * %u x %u + k * %u)\n", output_path, width, height,
           info.width, info.width_step, info.height, info.height_step);
    exit_code = 0;

done:
    free(pixels);
    pegan_stylegan2_model_free(model);
    pegan_context_free(context);
    return exit_code;
}
