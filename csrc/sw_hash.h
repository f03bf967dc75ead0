/*
 * sw_hash.h - non-cryptographic hashes used by sluiceway's compiled core.
 *
 * Contract:
 *   - Every function is pure, thread-safe and allocation-free; `data` may be
 *     NULL only when `len` is 0.
 *   - sw_fnv1a64() is 64-bit FNV-1a (offset basis 0xcbf29ce484222325, prime
 *     0x100000001b3) over the bytes exactly as given.
 *   - sw_crc32() is the IEEE 802.3 CRC-32 (reflected polynomial 0xEDB88320,
 *     initial value and final xor 0xFFFFFFFF): the same value as zlib's crc32()
 *     and nginx's ngx_crc32_long().  The split form (SW_CRC32_INIT,
 *     sw_crc32_update, sw_crc32_final) works on the raw, not yet inverted
 *     state, exactly like nginx's ngx_crc32_init/update/final, so a prefix
 *     can be hashed once and extended many times.
 *   - sw_mix64() is a bijective 64-bit finaliser (the splitmix64 output
 *     function): it spreads every input bit over the whole output.
 */
#ifndef SW_HASH_H
#define SW_HASH_H

#include <stddef.h>
#include <stdint.h>

#define SW_FNV1A64_BASIS UINT64_C(0xcbf29ce484222325)
#define SW_FNV1A64_PRIME UINT64_C(0x100000001b3)
#define SW_CRC32_INIT UINT32_C(0xffffffff)

/* 64-bit FNV-1a of `len` bytes at `data`. */
uint64_t sw_fnv1a64(const void *data, size_t len);

/* Raw CRC-32 state update; start from SW_CRC32_INIT, finish with sw_crc32_final. */
uint32_t sw_crc32_update(uint32_t state, const void *data, size_t len);

/* Turn a raw CRC-32 state into the CRC value. */
static inline uint32_t sw_crc32_final(uint32_t state) { return state ^ UINT32_C(0xffffffff); }

/* CRC-32 of `len` bytes at `data` (== zlib.crc32(data)). */
uint32_t sw_crc32(const void *data, size_t len);

/* splitmix64 finaliser: a bijection on 64-bit values with good avalanche. */
static inline uint64_t sw_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

#endif /* SW_HASH_H */
