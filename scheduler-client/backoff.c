/* scheduler-client/backoff.c - capped exponential back-off with jitter (see backoff.h). */
#include <math.h>

#include "scheduler-client/backoff.h"

void vn_backoff_init(VnBackoff *b, double initial, double max)
{
    b->initial = initial > 0 ? initial : 0.1;
    b->max = max >= b->initial ? max : b->initial;
    b->failures = 0;
}

double vn_backoff_next(VnBackoff *b, double random01)
{
    double step = b->initial * pow(2.0, MIN(b->failures, 30u));

    if (step > b->max)
        step = b->max;
    b->failures++;
    if (random01 < 0)
        random01 = 0;
    if (random01 >= 1)
        random01 = 0.999999;
    return step * (0.5 + 0.5 * random01);
}

void vn_backoff_reset(VnBackoff *b)
{
    b->failures = 0;
}
