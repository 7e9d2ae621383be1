#version 450
// dst = src, 16 bytes per invocation per step (grid-stride): the compute-shader copy that
// copy_bandwidth() times next to vkCmdCopyBuffer (which may run on a slower copy engine path).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 256) in;

layout(push_constant) uniform Params {
    uint n; // uvec4 elements
} p;

layout(set = 0, binding = 0) readonly buffer S { uvec4 s[]; };
layout(set = 0, binding = 1) writeonly buffer D { uvec4 d[]; };

void main() {
    uint stride = gl_NumWorkGroups.x * gl_NumWorkGroups.y * 256u;
    uint i = group_index() * 256u + gl_LocalInvocationID.x;
    // Four independent 16-byte loads in flight per invocation.
    for (; i + 3u * stride < p.n; i += 4u * stride) {
        uvec4 a = s[i], b = s[i + stride], c = s[i + 2u * stride], e = s[i + 3u * stride];
        d[i] = a;
        d[i + stride] = b;
        d[i + 2u * stride] = c;
        d[i + 3u * stride] = e;
    }
    for (; i < p.n; i += stride) {
        d[i] = s[i];
    }
}
