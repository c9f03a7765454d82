/* scheduler-client/backoff.h - reconnection delays: exponential, capped, with jitter, so a
 * fleet that lost its broker or database at once does not come back at once. */
#pragma once

#include <glib.h>

typedef struct {
    double initial; /* seconds */
    double max;     /* seconds */
    guint failures; /* consecutive failures so far */
} VnBackoff;

void vn_backoff_init(VnBackoff *b, double initial, double max);

/* The delay before the next attempt after one more failure, in seconds: the capped
 * exponential step times a random factor in [0.5, 1.0] ("equal jitter").  @random01 is a
 * number in [0, 1) (tests pass fixed values; callers pass g_random_double()). */
double vn_backoff_next(VnBackoff *b, double random01);

void vn_backoff_reset(VnBackoff *b);
