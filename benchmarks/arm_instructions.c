/* The driver benchmarks/arm_instructions.py runs under qemu: one call of one matmul kernel on
 * M activation rows, nothing else, so that the instructions logged inside the kernel's symbols
 * are exactly that call's. Built statically for aarch64 in two variants:
 *
 *   -DAIR_KERNELS='"kernels.h"'  our packed matmuls (a TVM object; kernels.h, written by the
 *                                benchmark, lists them): driver NAME M TASKS runs the first of the
 *                                TASKS parallel tasks the kernel splits its tiles into
 *   -DGGML                       llama.cpp's vec_dot kernels (ggml's quants.c): driver q4_0|q4_1|q8_0 N K M
 *                                (each of N weight rows against each of M activation rows, as ggml does
 *                                for a matrix without repacking)
 * The inputs are arbitrary bytes (0x3c3c is 1.06 as f16, 0x3f3f3f3f 0.75 as f32): neither kernel
 * branches on values.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* memset: few instructions (the driver's own are not counted, but they slow the emulation down). */
static void *filled(size_t bytes, int value) {
    void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
    return memset(p, value, bytes);
}

#ifdef AIR_KERNELS
#include <dlpack/dlpack.h>
#include <tvm/ffi/c_api.h>

typedef int (*packed_fn)(void *, const TVMFFIAny *, int32_t, TVMFFIAny *);
struct kernel {
    const char *name;
    packed_fn fn;
    int n, k, qs_rows, qbytes, sc_rows, nscales;
};
#include AIR_KERNELS

/* The kernels' only import: report a failed argument check and stop. */
void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t count) {
    fprintf(stderr, "%s:", kind);
    for (int32_t i = 0; i < count; i++) fprintf(stderr, " %s", parts[i] ? parts[i] : "");
    fprintf(stderr, "\n");
    exit(3);
}

/* The TVM runtime's thread pool, reduced to running task 0 of `tasks` on this thread. */
typedef struct { void *sync_handle; int32_t num_task; } TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv *penv, void *cdata);
extern int (*__TVMBackendParallelLaunch)(FTVMParallelLambda, void *, int);
static int tasks = 1;

static int first_task_only(FTVMParallelLambda lambda, void *cdata, int num_task) {
    (void)num_task;
    TVMParallelGroupEnv env = {NULL, tasks};
    return lambda(0, &env, cdata);
}

static DLTensor tensor(void *data, int64_t *shape, uint8_t code, uint8_t bits) {
    DLTensor t = {data, {kDLCPU, 0}, 2, {code, bits, 1}, shape, NULL, 0};
    return t;
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    int m = atoi(argv[2]);
    tasks = atoi(argv[3]);
    __TVMBackendParallelLaunch = first_task_only;
    for (size_t i = 0; i < sizeof(KERNELS) / sizeof(KERNELS[0]); i++) {
        const struct kernel *kn = &KERNELS[i];
        if (strcmp(kn->name, argv[1])) continue;
        int64_t sq[2] = {m, kn->k / 4}, sb[2] = {m, kn->k / 32}, sw[2] = {kn->qs_rows, kn->qbytes},
                ss[2] = {kn->sc_rows, kn->nscales}, sy[2] = {m, kn->n};
        size_t blocks = (size_t)m * (kn->k / 32);
        DLTensor t[6] = {tensor(filled((size_t)m * kn->k, 0x5a), sq, kDLInt, 32),
                         tensor(filled(4 * blocks, 0x3f), sb, kDLFloat, 32), tensor(filled(4 * blocks, 0x3f), sb, kDLFloat, 32),
                         tensor(filled((size_t)kn->qs_rows * kn->qbytes, 0xa7), sw, kDLUInt, 8),
                         tensor(filled(2 * (size_t)kn->sc_rows * kn->nscales, 0x3c), ss, kDLFloat, 16),
                         tensor(filled(4 * (size_t)m * kn->n, 0), sy, kDLFloat, 32)};
        TVMFFIAny args[6], result;
        memset(args, 0, sizeof(args));
        memset(&result, 0, sizeof(result));
        for (int j = 0; j < 6; j++) {
            args[j].type_index = kTVMFFIDLTensorPtr;
            args[j].v_ptr = &t[j];
        }
        return kn->fn(NULL, args, 6, &result);
    }
    fprintf(stderr, "unknown kernel %s\n", argv[1]);
    return 2;
}
#endif

#ifdef GGML
typedef void (*vec_dot_fn)(int n, float *s, size_t bs, const void *vx, size_t bx, const void *vy, size_t by, int nrc);
void ggml_vec_dot_q4_0_q8_0(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q4_1_q8_1(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q8_0_q8_0(int, float *, size_t, const void *, size_t, const void *, size_t, int);

static const struct {
    const char *name;
    vec_dot_fn fn;
    int weight_block, act_block;  /* bytes per 32 weights: block_q4_0 / q4_1 / q8_0, and the activations' q8_0 / q8_1 */
} KINDS[] = {
    {"q4_0", ggml_vec_dot_q4_0_q8_0, 18, 34},
    {"q4_1", ggml_vec_dot_q4_1_q8_1, 20, 36},
    {"q8_0", ggml_vec_dot_q8_0_q8_0, 34, 34},
};

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    int n = atoi(argv[2]), k = atoi(argv[3]), m = atoi(argv[4]);
    for (size_t i = 0; i < sizeof(KINDS) / sizeof(KINDS[0]); i++) {
        if (strcmp(KINDS[i].name, argv[1])) continue;
        size_t wrow = (size_t)KINDS[i].weight_block * (k / 32), xrow = (size_t)KINDS[i].act_block * (k / 32);
        uint8_t *w = filled(wrow * n, 0x3c), *x = filled(xrow * m, 0x3c);
        float *y = filled(sizeof(float) * (size_t)n * m, 0);
        for (int r = 0; r < n; r++)
            for (int j = 0; j < m; j++)
                KINDS[i].fn(k, &y[(size_t)j * n + r], 0, w + wrow * r, 0, x + xrow * j, 0, 1);
        return 0;
    }
    fprintf(stderr, "unknown kind %s\n", argv[1]);
    return 2;
}
#endif
