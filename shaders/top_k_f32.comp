#version 450
// One pass of the device top-k (k <= 64): each workgroup takes 4096 candidates (256 invocations
// x 16), every invocation sorts its 16, then k rounds of a workgroup arg-max pick the
// workgroup's k best in order. A round is a subgroup arg-max (subgroupMax on the value, then
// subgroupMin on the index among the ties), one shared slot per subgroup, and a scan of those
// slots: two barriers per round instead of a log2(256)-step shared-memory tree. Pass 1 reads plain values (index = position); later passes read
// the (value, index) pairs of the previous pass, until one workgroup remains and k pairs go
// back to the host. Order: larger value first, ties by lower index (as the CPU backend).
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "common.glsl"

layout(local_size_x = 256) in;

layout(push_constant) uniform Params {
    uint len;      // candidates in the input
    uint k;
    uint has_idx;  // 0: index = position (pass 1)
} p;

layout(set = 0, binding = 0) readonly buffer V { float vin[]; };
layout(set = 0, binding = 1) readonly buffer I { uint iin[]; };
layout(set = 0, binding = 2) writeonly buffer OV { float vout[]; };
layout(set = 0, binding = 3) writeonly buffer OI { uint iout[]; };

const uint PER = 16u;
const uint CHUNK = 256u * PER;
const float NEG_INF = -1.0 / 0.0;

// One slot per subgroup (subgroups are at least 4 wide).
shared float sv[64];
shared uint si[64];

bool better(float a, uint ia, float b, uint ib) {
    return a > b || (a == b && ia < ib);
}

void main() {
    uint g = group_index();
    uint tid = gl_LocalInvocationID.x;
    float lv[PER];
    uint li[PER];
    uint cnt = 0u;
    for (uint j = 0u; j < PER; j++) {
        uint e = g * CHUNK + j * 256u + tid;
        if (e >= p.len) {
            break;
        }
        float v = vin[e];
        uint ix = p.has_idx != 0u ? iin[e] : e;
        // insertion into the sorted private list
        uint at = cnt;
        while (at > 0u && better(v, ix, lv[at - 1u], li[at - 1u])) {
            lv[at] = lv[at - 1u];
            li[at] = li[at - 1u];
            at--;
        }
        lv[at] = v;
        li[at] = ix;
        cnt++;
    }
    uint head = 0u;
    for (uint r = 0u; r < p.k; r++) {
        float v = head < cnt ? lv[head] : NEG_INF;
        uint ix = head < cnt ? li[head] : 0xffffffffu;
        float m = subgroupMax(v);
        uint mi = subgroupMin(v == m ? ix : 0xffffffffu);
        if (subgroupElect()) {
            sv[gl_SubgroupID] = m;
            si[gl_SubgroupID] = mi;
        }
        barrier();
        float bv = sv[0];
        uint bi = si[0];
        for (uint s = 1u; s < gl_NumSubgroups; s++) {
            if (better(sv[s], si[s], bv, bi)) {
                bv = sv[s];
                bi = si[s];
            }
        }
        if (tid == 0u) {
            vout[g * p.k + r] = bv;
            iout[g * p.k + r] = bi;
        }
        // Indices are unique, so exactly one invocation owns the winner (exhausted lists all
        // match the padding (-inf, ~0) and advance harmlessly).
        if (v == bv && ix == bi) {
            head++;
        }
        barrier();
    }
}
