/* Unit tests of agent/ops/migration_policy: the monitor's decisions, step by step. */
#include "tests/unit/testutil.h"

#include "agent/ops/migration_policy.h"

static VnLmPolicyConfig nova_defaults(void)
{
    VnLmPolicyConfig c = { 500, 10, 75, 800, 0, VN_LM_ACTION_ABORT, FALSE };
    return c;
}

static VnJobStats remaining(gint64 bytes)
{
    VnJobStats s = { 0 };

    s.state = VN_JOB_RUNNING;
    s.data_total = G_GINT64_CONSTANT(4) << 30;
    s.data_remaining = bytes;
    s.memory_total = s.data_total;
    s.memory_remaining = bytes;
    return s;
}

/* Nova's documented example: 4 GiB of RAM, shared storage -> 50, 95, 140 ... 500 ms, a
 * step every 300 s; abort at 3200 s. */
static void test_nova_schedule(void **state)
{
    VnLmPolicyConfig cfg = nova_defaults();
    VnLmPolicy p;
    double at;

    (void)state;
    assert_true(vn_lm_data_gb(4096, NULL, 0) == 4.0);
    vn_lm_policy_init(&p, &cfg, 4.0);
    assert_int_equal(vn_lm_downtime_at(&p, 0, &at), 50);
    assert_true(at == 0);
    assert_int_equal(vn_lm_downtime_at(&p, 1, &at), 95);
    assert_true(at == 300);
    assert_int_equal(vn_lm_downtime_at(&p, 2, &at), 140);
    assert_int_equal(vn_lm_downtime_at(&p, 10, &at), 500);
    assert_true(at == 3000);
    /* small guests count as 2 GiB, disks too when copied */
    guint64 disks[] = { G_GUINT64_CONSTANT(1) << 30, G_GUINT64_CONSTANT(10) << 30 };
    assert_true(vn_lm_data_gb(128, disks, 2) == 2.0 + 2.0 + 10.0);
}

static void test_steps_applied_once_in_order(void **state)
{
    VnLmPolicyConfig cfg = nova_defaults();
    VnLmPolicy p;
    VnJobStats s = remaining(1 << 30);
    VnLmAction a;

    (void)state;
    vn_lm_policy_init(&p, &cfg, 2.0); /* a step every 150 s */
    a = vn_lm_policy_step(&p, 0, &s, FALSE, FALSE, FALSE);
    assert_int_equal(a.kind, VN_LM_SET_DOWNTIME);
    assert_int_equal(a.downtime_ms, 50);
    a = vn_lm_policy_step(&p, 0.5, &s, FALSE, FALSE, FALSE);
    assert_int_equal(a.kind, VN_LM_CONTINUE);
    a = vn_lm_policy_step(&p, 151, &s, FALSE, FALSE, FALSE);
    assert_int_equal(a.kind, VN_LM_SET_DOWNTIME);
    assert_int_equal(a.downtime_ms, 95);
    /* after a long gap, the missed steps come one call after another */
    int seen = 0;
    while ((a = vn_lm_policy_step(&p, 10000, &s, FALSE, FALSE, FALSE)).kind == VN_LM_SET_DOWNTIME)
        seen++;
    assert_int_equal(seen, 9);
}

static void test_completion_timeout_abort(void **state)
{
    VnLmPolicyConfig cfg = nova_defaults();
    VnLmPolicy p;
    VnJobStats s = remaining(1 << 30);
    VnLmAction a;

    (void)state;
    cfg.completion_timeout_s = 10; /* x 2 GiB = 20 s */
    cfg.steps = 3;
    vn_lm_policy_init(&p, &cfg, 2.0);
    while (vn_lm_policy_step(&p, 19, &s, FALSE, FALSE, FALSE).kind != VN_LM_CONTINUE)
        ;
    a = vn_lm_policy_step(&p, 21, &s, FALSE, FALSE, FALSE);
    while (a.kind == VN_LM_SET_DOWNTIME)
        a = vn_lm_policy_step(&p, 21, &s, FALSE, FALSE, FALSE);
    assert_int_equal(a.kind, VN_LM_ABORT);
    assert_non_null(a.reason);
    /* once only */
    a = vn_lm_policy_step(&p, 30, &s, FALSE, FALSE, FALSE);
    assert_int_equal(a.kind, VN_LM_CONTINUE);
}

static void test_force_complete_postcopy_or_pause(void **state)
{
    VnLmPolicyConfig cfg = nova_defaults();
    VnLmPolicy p;
    VnJobStats s = remaining(1 << 30);
    VnLmAction a;

    (void)state;
    cfg.completion_timeout_s = 5;
    cfg.steps = 3;
    cfg.action = VN_LM_ACTION_FORCE_COMPLETE;
    cfg.permit_post_copy = TRUE;
    vn_lm_policy_init(&p, &cfg, 2.0);
    do
        a = vn_lm_policy_step(&p, 11, &s, FALSE, FALSE, FALSE);
    while (a.kind == VN_LM_SET_DOWNTIME);
    assert_int_equal(a.kind, VN_LM_POSTCOPY);

    cfg.permit_post_copy = FALSE;
    vn_lm_policy_init(&p, &cfg, 2.0);
    do
        a = vn_lm_policy_step(&p, 11, &s, FALSE, FALSE, FALSE);
    while (a.kind == VN_LM_SET_DOWNTIME);
    assert_int_equal(a.kind, VN_LM_PAUSE);
}

static void test_never_abort_in_postcopy(void **state)
{
    VnLmPolicyConfig cfg = nova_defaults();
    VnLmPolicy p;
    VnJobStats s = remaining(1 << 30);
    VnLmAction a;

    (void)state;
    cfg.completion_timeout_s = 1;
    cfg.steps = 3;
    vn_lm_policy_init(&p, &cfg, 2.0);
    for (double t = 0; t < 100; t += 0.5) {
        a = vn_lm_policy_step(&p, t, &s, TRUE, TRUE, FALSE);
        assert_true(a.kind != VN_LM_ABORT);
    }
    /* an operator's abort works before post-copy */
    vn_lm_policy_init(&p, &cfg, 2.0);
    a = vn_lm_policy_step(&p, 0, &s, FALSE, TRUE, FALSE);
    assert_int_equal(a.kind, VN_LM_ABORT);
}

static void test_stall_detector(void **state)
{
    VnLmPolicyConfig cfg = nova_defaults();
    VnLmPolicy p;
    VnLmAction a;
    double t = 0;

    (void)state;
    cfg.stall_timeout_s = 20;
    cfg.completion_timeout_s = 0;
    cfg.steps = 3;
    cfg.delay_s = 1000;
    vn_lm_policy_init(&p, &cfg, 2.0);
    /* steady progress: no action besides the first downtime step */
    for (gint64 r = 1 << 30; r > (1 << 20); r -= 16 << 20, t += 0.5) {
        VnJobStats s = remaining(r);
        a = vn_lm_policy_step(&p, t, &s, FALSE, FALSE, FALSE);
        assert_true(a.kind == VN_LM_CONTINUE || a.kind == VN_LM_SET_DOWNTIME);
    }
    /* then a saw-tooth that never goes lower: a stall, after stall_timeout seconds */
    double stalled_at = -1;
    for (int i = 0; i < 200 && stalled_at < 0; i++, t += 0.5) {
        VnJobStats s = remaining(i % 4 == 0 ? (200 << 20) : (40 << 20));
        a = vn_lm_policy_step(&p, t, &s, FALSE, FALSE, FALSE);
        if (a.kind == VN_LM_ABORT)
            stalled_at = t;
    }
    assert_true(stalled_at > 0);
    assert_true(stalled_at - 32 >= 19); /* progress ended around t = 32 */
}

static void test_operator_force(void **state)
{
    VnLmPolicyConfig cfg = nova_defaults();
    VnLmPolicy p;
    VnJobStats s = remaining(1 << 30);
    VnLmAction a;

    (void)state;
    vn_lm_policy_init(&p, &cfg, 2.0);
    a = vn_lm_policy_step(&p, 1, &s, FALSE, FALSE, TRUE);
    assert_int_equal(a.kind, VN_LM_PAUSE);
    a = vn_lm_policy_step(&p, 2, &s, FALSE, FALSE, TRUE);
    assert_true(a.kind != VN_LM_PAUSE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nova_schedule),
        cmocka_unit_test(test_steps_applied_once_in_order),
        cmocka_unit_test(test_completion_timeout_abort),
        cmocka_unit_test(test_force_complete_postcopy_or_pause),
        cmocka_unit_test(test_never_abort_in_postcopy),
        cmocka_unit_test(test_stall_detector),
        cmocka_unit_test(test_operator_force),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
