/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sojourn.h - the bucket of a sojourn in the per-stage histogram (abi.h, MOA_SOJOURN_*).
 *
 * Branch-free bit length (a binary search by shifts: each step's bit is computed by an add that
 * carries into bit k exactly when any of the k bits above is set, valid while v < 2^(2k)), then
 * a bound the verifier of 6.1 sees where the index is used.
 */
#ifndef MOA_SOJOURN_H
#define MOA_SOJOURN_H

#include <linux/types.h>
#include "abi.h"

/* Number of significant bits of v (0 for 0), for any v. */
static __always_inline __u32 moa_bit_length(__u64 v)
{
	__u64 b, n = 0;

	b = ((v >> 32) + 0xffffffffULL) >> 32 << 5;	/* v >> 32 < 2^32: carry iff nonzero */
	v >>= b;
	n += b;
	b = ((v >> 16) + 0xffffULL) >> 16 << 4;		/* now v < 2^32 */
	v >>= b;
	n += b;
	b = ((v >> 8) + 0xffULL) >> 8 << 3;
	v >>= b;
	n += b;
	b = ((v >> 4) + 0xfULL) >> 4 << 2;
	v >>= b;
	n += b;
	b = ((v >> 2) + 0x3ULL) >> 2 << 1;
	v >>= b;
	n += b;
	b = ((v >> 1) + 0x1ULL) >> 1;			/* now v < 4 */
	v >>= b;
	n += b;
	return n + v;				/* v is 0 or 1 */
}

/* The histogram bucket of a sojourn of `ns`: 0 .. MOA_SOJOURN_BUCKETS - 1. */
static __always_inline __u32 moa_sojourn_bucket(__u64 ns)
{
	__u32 k = moa_bit_length(ns >> MOA_SOJOURN_SHIFT);

	/* Hidden from clang so that the bound stays where the verifier needs it. */
	asm volatile("" : "+r"(k));
	if (k > MOA_SOJOURN_BUCKETS - 1)
		k = MOA_SOJOURN_BUCKETS - 1;
	return k;
}

#endif /* MOA_SOJOURN_H */
