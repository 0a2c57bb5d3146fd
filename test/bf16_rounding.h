// fp32 -> bf16 -> fp32 on the CPU, for the tests that emulate what the GPU stores in bf16
// (test/attention_emulation.h, test/test_grad_accumulation.cpp).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

// Round to nearest, ties to even, as __float2bfloat16_rn; NaN stays NaN.
inline float round_bf16(float x) {
    if (std::isnan(x)) return x;
    uint32_t u;
    std::memcpy(&u, &x, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    u &= 0xFFFF0000u;
    std::memcpy(&x, &u, 4);
    return x;
}
