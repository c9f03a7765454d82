/* tests/bench/bench_net.c - the time to plug a port on the host, next to the bare netlink
 * work it stands on, measured in the same run, in a network namespace of its own (root):
 *
 *   baseline    libnl alone: create a bridge, put an interface under it, set it up, delete
 *   new         vn_net_acquire of a network whose bridge does not exist yet + release
 *               (the bridge made, marked ours, checked, and removed with its last port)
 *   existing    vn_net_acquire of a network whose bridge exists (another port's), + release
 *
 *   bench_net [ROUNDS]      prints a table; BENCH_JSON=1 adds a JSON line */
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>
#include <netlink/netlink.h>
#include <netlink/route/link.h>

#include "network/bridge.h"

static int cmp_double(gconstpointer a, gconstpointer b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static double med(GArray *a)
{
    g_array_sort(a, cmp_double);
    return g_array_index(a, double, a->len / 2);
}

static double pct(GArray *a, double p)
{
    g_array_sort(a, cmp_double);
    return g_array_index(a, double, (guint)((a->len - 1) * p));
}

static void baseline(struct nl_sock *sk, int slave_ifindex)
{
    struct rtnl_link *l = rtnl_link_alloc();
    struct rtnl_link *cur = NULL, *want = rtnl_link_alloc();

    rtnl_link_set_name(l, "vnbenchbr");
    rtnl_link_set_type(l, "bridge");
    rtnl_link_set_mtu(l, 1500);
    if (rtnl_link_add(sk, l, NLM_F_CREATE | NLM_F_EXCL) < 0 ||
        rtnl_link_get_kernel(sk, 0, "vnbenchbr", &cur) < 0) {
        fprintf(stderr, "bench_net: cannot create a bridge (root, in a namespace?)\n");
        exit(1);
    }
    rtnl_link_enslave_ifindex(sk, rtnl_link_get_ifindex(cur), slave_ifindex);
    rtnl_link_set_flags(want, IFF_UP);
    rtnl_link_change(sk, cur, want, 0);
    rtnl_link_delete(sk, cur);
    rtnl_link_put(cur);
    rtnl_link_put(want);
    rtnl_link_put(l);
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 200;
    char *maps[] = { (char *)"physnet1:vnbench0", NULL };
    g_autoptr(GError) err = NULL;
    g_autoptr(VnNetHost) h = NULL;
    GArray *t_base = g_array_new(FALSE, FALSE, sizeof(double));
    GArray *t_new = g_array_new(FALSE, FALSE, sizeof(double));
    GArray *t_have = g_array_new(FALSE, FALSE, sizeof(double));
    struct nl_sock *sk = nl_socket_alloc();
    struct rtnl_link *phys = NULL;
    VnNetSegment seg = { "bench-net-0001", "physnet1", 0, 1500 };

    if (unshare(CLONE_NEWNET) < 0) {
        perror("bench_net: unshare(CLONE_NEWNET) (run as root)");
        return 1;
    }
    if (system("ip link set lo up && ip link add vnbench0 type veth peer name vnbenchp0 && "
               "ip link set vnbenchp0 up") != 0)
        return 1;
    nl_connect(sk, NETLINK_ROUTE);
    rtnl_link_get_kernel(sk, 0, "vnbench0", &phys);
    h = vn_net_host_new(maps, 1500, &err);
    if (!h) {
        fprintf(stderr, "bench_net: %s\n", err->message);
        return 1;
    }
    for (int i = 0; i < rounds; i++) {
        /* interleaved rounds: the three measures see the same machine state */
        gint64 t0 = g_get_monotonic_time();
        baseline(sk, rtnl_link_get_ifindex(phys));
        gint64 t1 = g_get_monotonic_time();
        g_autofree char *br = vn_net_acquire(h, &seg, "p1", &err);
        if (!br) {
            fprintf(stderr, "bench_net: %s\n", err->message);
            return 1;
        }
        gint64 t2 = g_get_monotonic_time();
        g_autofree char *br2 = vn_net_acquire(h, &seg, "p2", &err);
        gint64 t3 = g_get_monotonic_time();
        if (!br2 || strcmp(br, br2) != 0) {
            fprintf(stderr, "bench_net: the second port got %s\n", br2 ? br2 : err->message);
            return 1;
        }
        vn_net_release(h, seg.network_id, "p2");
        vn_net_release(h, seg.network_id, "p1");
        gint64 t4 = g_get_monotonic_time();
        double base = (t1 - t0) / 1000.0, made = (t2 - t1) / 1000.0, have = (t3 - t2) / 1000.0;
        double gone = (t4 - t3) / 1000.0;
        made += gone; /* the new network's full cycle: made and removed */
        g_array_append_val(t_base, base);
        g_array_append_val(t_new, made);
        g_array_append_val(t_have, have);
    }
    printf("plug a port (%d rounds, ms)   median    p90    ratio to baseline\n", rounds);
    printf("baseline (libnl alone)       %7.3f %7.3f\n", med(t_base), pct(t_base, 0.9));
    printf("new network (make+remove)    %7.3f %7.3f  %.2f\n", med(t_new), pct(t_new, 0.9),
           med(t_new) / med(t_base));
    printf("existing bridge              %7.3f %7.3f  %.2f\n", med(t_have), pct(t_have, 0.9),
           med(t_have) / med(t_base));
    if (g_getenv("BENCH_JSON"))
        printf("{\"bench\": \"net\", \"rounds\": %d, \"baseline_ms\": %.3f, \"new_ms\": %.3f, "
               "\"existing_ms\": %.3f, \"new_ratio\": %.3f}\n",
               rounds, med(t_base), med(t_new), med(t_have), med(t_new) / med(t_base));
    rtnl_link_put(phys);
    nl_socket_free(sk);
    return 0;
}
