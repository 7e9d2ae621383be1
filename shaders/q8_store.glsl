// Writes one vec4 of a row in quantize_x_f32's int8 layout (codes, then an f32 scale per 32,
// then an f32 sum of the dequantized codes per 16) into Q8_DST (a uint[] the includer
// defines), from the invocation holding vec4 `gi` of a row of `cols`: the 8 invocations of a
// group of 32 must be neighbours in one subgroup (aligned to 8) and all call this, `live`
// false for padding (v ignored). Needs GL_KHR_shader_subgroup_shuffle. The one definition of
// that layout's arithmetic: quantize_x_f32 and the producers that quantize their own output for
// the next decode matvec (the row norms, attention's merge) all store through it, bit for bit
// alike.
void store_q8_vec4(uint gi, vec4 v, uint cols, bool live) {
    v = live ? v : vec4(0.0);
    vec4 a4 = abs(v);
    float amax = max(max(a4.x, a4.y), max(a4.z, a4.w));
    amax = max(amax, subgroupShuffleXor(amax, 1u));
    amax = max(amax, subgroupShuffleXor(amax, 2u));
    amax = max(amax, subgroupShuffleXor(amax, 4u));
    float dq = amax / 127.0;
    float id = amax > 0.0 ? 127.0 / amax : 0.0;
    ivec4 c = clamp(ivec4(round(v * id)), ivec4(-127), ivec4(127));
    int s = c.x + c.y + c.z + c.w;
    s += subgroupShuffleXor(s, 1u);
    s += subgroupShuffleXor(s, 2u);
    if (live) {
        uvec4 b = uvec4(c) & 0xffu;
        Q8_DST[gi] = b.x | (b.y << 8u) | (b.z << 16u) | (b.w << 24u);
        if ((gi & 7u) == 0u) {
            Q8_DST[cols / 4u + gi / 8u] = floatBitsToUint(dq);
        }
        if ((gi & 3u) == 0u) {
            Q8_DST[cols / 4u + cols / 32u + gi / 4u] = floatBitsToUint(dq * float(s));
        }
    }
}
