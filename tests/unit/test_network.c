/* Unit tests of network/port: MAC addresses and device names. */
#include "tests/unit/testutil.h"

#include <string.h>

#include "network/port.h"

static void test_mac(void **state)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *a = vn_net_mac_normalize("FA:16:3E:01:02:0A", &err);
    g_autofree char *b = vn_net_mac_normalize("fa-16-3e-01-02-0a", &err);
    g_autofree char *c = vn_net_mac_normalize("fa163e01020a", &err);
    g_autofree char *g = vn_net_mac_for_port("port-1");
    g_autofree char *g2 = vn_net_mac_for_port("port-1");
    g_autofree char *g3 = vn_net_mac_for_port("port-2");

    (void)state;
    assert_string_equal(a, "fa:16:3e:01:02:0a");
    assert_string_equal(b, a);
    assert_string_equal(c, a);
    assert_null(vn_net_mac_normalize("01:00:5e:00:00:01", &err)); /* multicast */
    g_clear_error(&err);
    assert_null(vn_net_mac_normalize("fa:16:3e:01:02", &err));
    g_clear_error(&err);
    assert_null(vn_net_mac_normalize("fa:16:3e:01:02:0a:0b", &err));
    g_clear_error(&err);
    assert_null(vn_net_mac_normalize("zz:16:3e:01:02:0a", &err));
    g_clear_error(&err);
    assert_true(g_str_has_prefix(g, "fa:16:3e:"));
    assert_string_equal(g, g2);
    assert_string_not_equal(g, g3);
    g_autofree char *n = vn_net_mac_normalize(g, &err);
    assert_string_equal(n, g);
}

static void test_device_names(void **state)
{
    g_autofree char *t = vn_net_device_name("tap", "0b5e1c5e-8f1d-4c1a-9d4e-2f7c9a6b1e01");
    g_autofree char *s = vn_net_device_name("brq", "ab");

    (void)state;
    assert_string_equal(t, "tap0b5e1c5e8f1");
    assert_int_equal(strlen(t), 14);
    assert_string_equal(s, "brqab");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mac),
        cmocka_unit_test(test_device_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
