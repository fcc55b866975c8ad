/* The AVX-512 intrinsics of core/fast/kernels/panel_linear.c in AVX2, for its tests on a CPU without
   AVX-512: SIMDe (Debian's libsimde-dev, header-only) implements each one as its two 256-bit halves,
   fused multiply-adds as FMAs, so every lane's arithmetic is the one that the hardware does.
   tests/test_panel.py builds the kernel with `-include` this file and -DLOSSLENS_AVX512_EMULATED. */
#include <immintrin.h>
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

/* Missing from SIMDe 0.7: float to int32 in the current rounding mode (to nearest), per half. */
static inline simde__m512i emulated_cvtps_epi32(simde__m512 a) {
    simde__m512_private a_ = simde__m512_to_private(a);
    simde__m512i_private r_;
    for (int i = 0; i < 2; i++) r_.m256i[i] = _mm256_cvtps_epi32(a_.m256[i]);
    return simde__m512i_from_private(r_);
}
#undef _mm512_cvtps_epi32
#define _mm512_cvtps_epi32(a) emulated_cvtps_epi32(a)
