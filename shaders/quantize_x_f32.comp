#version 450
// Int8 activations for the decode kernels matvec*_{w}_q8 (shaders/README.md, "Decode"): one
// vector x of `cols` (a multiple of 32) quantized per group of 32, once per token and input.
// Output (uint words): [0, cols/4) the codes, 4 signed bytes per word in element order;
// then cols/32 f32 scales d (x ~ d * q, d = max|x| / 127); then cols/16 f32 sums of the
// quantized x (d * sum q) per 16 elements, which the weights' min terms multiply: so the
// kernels compute exactly W . x_hat, and the error is W . (x_hat - x) whatever the min/scale
// split of the weights (with sums of the original x, the error would scale with |scale * q|,
// which exceeds |w| for asymmetric codes).
// One invocation per group of 32.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 64) in;

layout(push_constant) uniform Params {
    uint cols;
} p;

layout(set = 0, binding = 0) readonly buffer X4 { vec4 x4[]; };
layout(set = 0, binding = 1) writeonly buffer Q { uint q[]; };

void main() {
    uint gi = group_index() * 64u + gl_LocalInvocationID.x;
    if (gi >= p.cols / 32u) {
        return;
    }
    vec4 v[8];
    float amax = 0.0;
    for (uint i = 0u; i < 8u; i++) {
        v[i] = x4[8u * gi + i];
        vec4 a = abs(v[i]);
        amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
    }
    float d = amax / 127.0;
    float id = amax > 0.0 ? 127.0 / amax : 0.0;
    ivec4 s0 = ivec4(0), s1 = ivec4(0);
    for (uint i = 0u; i < 8u; i++) {
        ivec4 c = clamp(ivec4(round(v[i] * id)), ivec4(-127), ivec4(127));
        uvec4 b = uvec4(c) & 0xffu;
        q[8u * gi + i] = b.x | (b.y << 8u) | (b.z << 16u) | (b.w << 24u);
        if (i < 4u) {
            s0 += c;
        } else {
            s1 += c;
        }
    }
    uint base = p.cols / 4u;
    q[base + gi] = floatBitsToUint(d);
    base += p.cols / 32u;
    q[base + 2u * gi] = floatBitsToUint(d * float(s0.x + s0.y + s0.z + s0.w));
    q[base + 2u * gi + 1u] = floatBitsToUint(d * float(s1.x + s1.y + s1.z + s1.w));
}
