#version 450
// Int8 activations for the decode kernels matvec*_{w}_q8 (shaders/README.md, "Decode"): one
// vector x of `cols` (a multiple of 32) quantized per group of 32, once per token and input.
// Output (uint words): [0, cols/4) the codes, 4 signed bytes per word in element order;
// then cols/32 f32 scales d (x ~ d * q, d = max|x| / 127); then cols/16 f32 sums of the
// quantized x (d * sum q) per 16 elements, which the weights' min terms multiply: so the
// kernels compute exactly W . x_hat, and the error is W . (x_hat - x) whatever the min/scale
// split of the weights (with sums of the original x, the error would scale with |scale * q|,
// which exceeds |w| for asymmetric codes).
// One invocation per 4 elements (one vec4 load, one word of codes); a group of 32 is 8
// neighbouring invocations, reduced with subgroup shuffles (subgroups are >= 8 wide). The norms
// write the same bits themselves (rownorm.glsl's store_q8), so this runs only for inputs no
// norm produced (o_proj's, down_proj's, the lm_head's after an in-place norm).
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#include "common.glsl"

layout(local_size_x = 256) in;

layout(push_constant) uniform Params {
    uint cols;
} p;

layout(set = 0, binding = 0) readonly buffer X4 { vec4 x4[]; };
layout(set = 0, binding = 1) writeonly buffer Q { uint q[]; };
#define Q8_DST q
#include "q8_store.glsl"

void main() {
    uint i = group_index() * 256u + gl_LocalInvocationID.x;
    uint d4 = p.cols / 4u;
    // Invocations past the end still take part in the shuffles (groups of 8 are all in or all
    // out: cols % 32 == 0).
    vec4 v = i < d4 ? x4[i] : vec4(0.0);
    store_q8_vec4(i, v, p.cols, i < d4);
}
