/* agent/base/config.c - the option table and the code it drives.
 *
 * Each option is one row: section, key, type, where it lives in VnConfig, its textual
 * default (which may refer to a [DEFAULT] option as $name), bounds or choices, flags and
 * help.  Parsing, validation, the dump and the Markdown reference all walk this table, so
 * an option exists everywhere or nowhere. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <math.h>

#include <glib.h>

#include "agent/base/config.h"
#include "agent/base/log.h"

GQuark vn_config_error_quark(void)
{
    return g_quark_from_static_string("vn-config-error");
}

typedef enum { OPT_STR, OPT_INT, OPT_DOUBLE, OPT_BOOL, OPT_ENUM, OPT_LIST } OptType;

enum {
    OPT_SECRET = 1 << 0, /* mask in dumps and logs */
    OPT_RELOAD = 1 << 1, /* SIGHUP applies a new value */
};

typedef struct {
    const char *section;
    const char *key;
    OptType type;
    size_t offset;
    const char *def;         /* textual default; $name expands a [DEFAULT] option */
    const char *doc_default; /* shown instead of def when the default is computed */
    double min, max;         /* OPT_INT, OPT_DOUBLE */
    const char *const *choices;
    unsigned flags;
    const char *help;
} OptDef;

static const char *const log_levels[] = { "debug", "info", "warning", "error", NULL };
static const char *const log_formats[] = { "plain", "json", NULL };
static const char *const log_targets[] = { "auto", "stderr", "journald", NULL };
static const char *const virt_types[] = { "kvm", "qemu", NULL };
static const char *const cpu_modes[] = { "default", "host-model", "host-passthrough",
                                         "custom",  "none",       NULL };
static const char *const lm_actions[] = { "abort", "force_complete", NULL };
static const char *const vol_drivers[] = { "kernel", "qemu", NULL };

#define O(f) offsetof(VnConfig, f)
#define SEC  1.0
#define BIG  2147483647.0

/* clang-format off */
static const OptDef opts[] = {
    { "DEFAULT", "host", OPT_STR, O(host), "", "the machine's hostname", 0, 0, NULL, 0,
      "Name of this compute host: the RPC server name (queue <topic>.<host>) and the host "
      "column of every row this agent writes." },
    { "DEFAULT", "state_path", OPT_STR, O(state_path), "/var/lib/virtnode", NULL, 0, 0, NULL, 0,
      "Directory for the agent's own state: the journal database and its lock." },
    { "DEFAULT", "instances_path", OPT_STR, O(instances_path), "$state_path/instances", NULL, 0, 0,
      NULL, 0,
      "Directory holding instance directories and the image cache; may be shared between "
      "hosts (the live-migration code detects that)." },
    { "DEFAULT", "log_level", OPT_ENUM, O(log_level), "info", NULL, 0, 0, log_levels, OPT_RELOAD,
      "Lowest level of messages logged." },
    { "DEFAULT", "log_format", OPT_ENUM, O(log_format), "plain", NULL, 0, 0, log_formats,
      OPT_RELOAD, "plain: one readable line per message; json: one JSON object per line." },
    { "DEFAULT", "log_target", OPT_ENUM, O(log_target), "auto", NULL, 0, 0, log_targets, 0,
      "auto: journald when stderr is connected to the journal, else stderr." },
    { "DEFAULT", "graceful_shutdown_timeout", OPT_INT, O(graceful_shutdown_timeout), "60", NULL,
      0, 86400, NULL, OPT_RELOAD,
      "On SIGTERM, seconds to let running operations finish before the agent exits anyway." },
    { "DEFAULT", "max_concurrent_builds", OPT_INT, O(max_concurrent_builds), "10", NULL, 1, 1000,
      NULL, 0, "Builds that run at the same time; more wait in order." },
    { "DEFAULT", "max_concurrent_live_migrations", OPT_INT, O(max_concurrent_live_migrations),
      "1", NULL, 1, 64, NULL, 0, "Outgoing live migrations that run at the same time." },
    { "DEFAULT", "max_concurrent_operations", OPT_INT, O(max_concurrent_operations), "16", NULL,
      1, 1000, NULL, 0,
      "Other operations (power actions, deletes, migration steps) that run at the same time." },
    { "DEFAULT", "max_queued_per_instance", OPT_INT, O(max_queued_per_instance), "32", NULL, 1,
      10000, NULL, 0,
      "Operations that may wait for one instance; a request beyond that is refused." },
    { "DEFAULT", "shutdown_timeout", OPT_INT, O(shutdown_timeout), "60", NULL, 0, 86400, NULL,
      OPT_RELOAD,
      "Seconds a graceful stop waits for the guest to power off before forcing it; a "
      "request may ask for less." },
    { "DEFAULT", "shutdown_retry_interval", OPT_INT, O(shutdown_retry_interval), "10", NULL, 1,
      3600, NULL, OPT_RELOAD,
      "Seconds between ACPI power-button presses during a graceful stop." },
    { "DEFAULT", "sync_power_state_interval", OPT_INT, O(sync_power_state_interval), "600",
      NULL, 0, 86400, NULL, OPT_RELOAD,
      "Seconds between passes that make the recorded power state follow the hypervisor's "
      "(0 disables; lifecycle events still apply)." },
    { "DEFAULT", "console_output_max_bytes", OPT_INT, O(console_output_max_bytes), "65536",
      NULL, 1024, 16777216, NULL, OPT_RELOAD,
      "Largest tail of a serial console log that get_console_output returns." },
    { "DEFAULT", "report_interval", OPT_INT, O(report_interval), "10", NULL, 1, 86400, NULL,
      OPT_RELOAD,
      "Seconds between checks of the host's capacity row; it is written only when it "
      "changed (and within a second of any change the agent makes)." },
    { "DEFAULT", "heartbeat_interval", OPT_INT, O(heartbeat_interval), "10", NULL, 1, 86400,
      NULL, OPT_RELOAD,
      "Seconds between heartbeats written to the services row, and between the pings sent "
      "through this host's own queue that prove its command path (services.last_probe_at)." },
    { "DEFAULT", "service_down_time", OPT_INT, O(service_down_time), "60", NULL, 1, 86400, NULL,
      OPT_RELOAD,
      "A host whose last heartbeat is older than this many seconds is down." },
    { "DEFAULT", "reserved_host_memory_mb", OPT_INT, O(reserved_host_memory_mb), "512", NULL, 0,
      BIG, NULL, OPT_RELOAD, "Memory kept for the host, never given to guests." },
    { "DEFAULT", "reserved_host_disk_mb", OPT_INT, O(reserved_host_disk_mb), "0", NULL, 0, BIG,
      NULL, OPT_RELOAD, "Disk space of instances_path kept for the host." },
    { "DEFAULT", "reserved_host_cpus", OPT_INT, O(reserved_host_cpus), "0", NULL, 0, 65536, NULL,
      OPT_RELOAD, "Host CPUs kept for the host." },
    { "DEFAULT", "cpu_allocation_ratio", OPT_DOUBLE, O(cpu_allocation_ratio), "4.0", NULL, 0.0001,
      1000, NULL, OPT_RELOAD, "Virtual CPUs per physical CPU." },
    { "DEFAULT", "ram_allocation_ratio", OPT_DOUBLE, O(ram_allocation_ratio), "1.0", NULL, 0.0001,
      1000, NULL, OPT_RELOAD, "Guest memory per unit of host memory." },
    { "DEFAULT", "disk_allocation_ratio", OPT_DOUBLE, O(disk_allocation_ratio), "1.0", NULL,
      0.0001, 1000, NULL, OPT_RELOAD, "Guest disk per unit of host disk." },

    { "amqp", "transport_url", OPT_LIST, O(amqp_transport_url),
      "amqp://guest:guest@127.0.0.1:5672/", NULL, 0, 0, NULL, OPT_SECRET,
      "Comma-separated broker URLs (amqp:// or amqps://user:password@host:port/vhost); the "
      "agent fails over between them." },
    { "amqp", "control_exchange", OPT_STR, O(amqp_control_exchange), "virtnode", NULL, 0, 0,
      NULL, 0, "Topic exchange of the RPC and notification messages." },
    { "amqp", "topic", OPT_STR, O(amqp_topic), "compute", NULL, 0, 0, NULL, 0,
      "RPC topic: the agent consumes <topic>, <topic>.<host> and <topic>_fanout." },
    { "amqp", "heartbeat_timeout_threshold", OPT_INT, O(amqp_heartbeat_timeout), "60", NULL, 0,
      600, NULL, 0,
      "AMQP heartbeat timeout in seconds negotiated with the broker (0 disables)." },
    { "amqp", "prefetch_count", OPT_INT, O(amqp_prefetch_count), "64", NULL, 1, 65535, NULL, 0,
      "Unacknowledged messages the broker may push at once (basic.qos)." },
    { "amqp", "durable_queues", OPT_BOOL, O(amqp_durable_queues), "true", NULL, 0, 0, NULL, 0,
      "Declare the control exchange and the RPC queues durable, so that they and their "
      "bindings outlive a broker restart and no cast published meanwhile is dropped "
      "unrouted. Controllers must declare them alike (oslo.messaging: "
      "[oslo_messaging_rabbit] amqp_durable_queues = true, or rabbit_quorum_queue = true)." },
    { "amqp", "quorum_queues", OPT_BOOL, O(amqp_quorum_queues), "false", NULL, 0, 0, NULL, 0,
      "Declare the shared RPC queues as quorum queues (implies durable)." },
    { "amqp", "transient_queues_ttl", OPT_INT, O(amqp_transient_queues_ttl), "1800", NULL, 1,
      BIG, NULL, 0, "Seconds an unused fanout queue lives (x-expires)." },
    { "amqp", "dead_letter_exchange", OPT_STR, O(amqp_dead_letter_exchange), "", NULL, 0, 0,
      NULL, 0,
      "Exchange that receives rejected (malformed) requests; empty drops them after logging." },
    { "amqp", "max_message_bytes", OPT_INT, O(amqp_max_message_bytes), "1048576", NULL, 1024,
      134217728, NULL, 0, "Largest request body accepted; bigger ones are rejected." },
    { "amqp", "connect_timeout", OPT_INT, O(amqp_connect_timeout), "10", NULL, 1, 600, NULL, 0,
      "Seconds to open a broker connection and log in." },
    { "amqp", "reconnect_interval", OPT_INT, O(amqp_reconnect_interval), "1", NULL, 1, 600, NULL,
      0, "First delay before reconnecting; it doubles per failure, with random jitter." },
    { "amqp", "reconnect_interval_max", OPT_INT, O(amqp_reconnect_interval_max), "5", NULL, 1,
      3600, NULL, 0,
      "Longest delay between reconnection attempts (jittered to 50-100 %), so a broker that "
      "comes back is consumed from again within seconds." },
    { "amqp", "reply_timeout", OPT_INT, O(amqp_reply_timeout), "60", NULL, 1, 3600, NULL, 0,
      "Seconds to keep retrying a reply whose reply queue does not exist yet." },
    { "amqp", "duplicate_window", OPT_INT, O(amqp_duplicate_window), "3600", NULL, 60, 2592000,
      NULL, 0,
      "Seconds a request's _unique_id is remembered (across restarts) so that a redelivery "
      "is not applied twice." },
    { "amqp", "notifications", OPT_BOOL, O(amqp_notifications), "true", NULL, 0, 0, NULL, 0,
      "Publish versioned notifications." },
    { "amqp", "notification_topic", OPT_STR, O(amqp_notification_topic), "notifications", NULL,
      0, 0, NULL, 0,
      "Notifications go to <notification_topic>.info and <notification_topic>.error." },
    { "amqp", "outbox_limit", OPT_INT, O(amqp_outbox_limit), "10000", NULL, 100, 10000000, NULL,
      0, "Notifications kept while the broker is unreachable; the oldest are dropped beyond." },
    { "amqp", "ssl_ca_file", OPT_STR, O(amqp_ssl_ca_file), "", NULL, 0, 0, NULL, 0,
      "CA bundle for amqps:// brokers (empty: the system's)." },
    { "amqp", "ssl_cert_file", OPT_STR, O(amqp_ssl_cert_file), "", NULL, 0, 0, NULL, 0,
      "Client certificate for amqps:// brokers." },
    { "amqp", "ssl_key_file", OPT_STR, O(amqp_ssl_key_file), "", NULL, 0, 0, NULL, 0,
      "Key of the client certificate." },
    { "amqp", "ssl_verify_hostname", OPT_BOOL, O(amqp_ssl_verify_hostname), "true", NULL, 0, 0,
      NULL, 0, "Check that the broker's certificate names the host in the URL." },

    { "database", "connection", OPT_STR, O(db_connection), "", NULL, 0, 0, NULL, OPT_SECRET,
      "PostgreSQL connection: a postgresql:// URI or a key=value conninfo string (TLS with "
      "libpq's sslmode, sslrootcert, ... keys). Empty disables reporting." },
    { "database", "password_file", OPT_STR, O(db_password_file), "", NULL, 0, 0, NULL, 0,
      "File whose first line is the database password (else libpq's PGPASSWORD or "
      "~/.pgpass)." },
    { "database", "connect_timeout", OPT_INT, O(db_connect_timeout), "5", NULL, 1, 600, NULL, 0,
      "Seconds to open a database connection." },
    { "database", "retry_interval", OPT_INT, O(db_retry_interval), "1", NULL, 1, 600, NULL, 0,
      "First delay before reconnecting to the database; it doubles per failure." },
    { "database", "retry_interval_max", OPT_INT, O(db_retry_interval_max), "10", NULL, 1, 3600,
      NULL, 0,
      "Longest delay between database reconnection attempts; at most report_interval keeps "
      "the rows exact within one report interval after an outage." },

    { "libvirt", "uri", OPT_STR, O(libvirt_uri), "qemu:///system", NULL, 0, 0, NULL, 0,
      "libvirt connection URI of this host's hypervisor." },
    { "libvirt", "virt_type", OPT_ENUM, O(virt_type), "kvm", NULL, 0, 0, virt_types, 0,
      "kvm: hardware virtualization; qemu: software emulation (TCG), for hosts without KVM." },
    { "libvirt", "cpu_mode", OPT_ENUM, O(cpu_mode), "default", NULL, 0, 0, cpu_modes, 0,
      "Guest CPU: default is host-model for kvm and the hypervisor's own model for qemu." },
    { "libvirt", "cpu_model", OPT_STR, O(cpu_model), "", NULL, 0, 0, NULL, 0,
      "CPU model name when cpu_mode is custom." },
    { "libvirt", "keepalive_interval", OPT_INT, O(keepalive_interval), "5", NULL, 1, 600, NULL, 0,
      "Seconds between libvirt keepalive probes." },
    { "libvirt", "keepalive_count", OPT_INT, O(keepalive_count), "5", NULL, 1, 100, NULL, 0,
      "Unanswered keepalive probes after which the libvirt connection is dropped and "
      "reopened." },
    { "libvirt", "wait_soft_reboot_seconds", OPT_INT, O(wait_soft_reboot_seconds), "120", NULL,
      1, 86400, NULL, OPT_RELOAD,
      "Seconds a soft reboot waits for the guest before a hard reboot." },
    { "libvirt", "require_confinement", OPT_BOOL, O(require_confinement), "true", NULL, 0, 0,
      NULL, OPT_RELOAD,
      "Refuse to run a guest whose security label cannot be applied and verified." },
    { "libvirt", "per_guest_dac", OPT_BOOL, O(per_guest_dac), "true", NULL, 0, 0, NULL, 0,
      "Run each guest's QEMU under its own uid/gid (static DAC label) from the range below, "
      "in addition to an SELinux or AppArmor label when the host has one." },
    { "libvirt", "guest_uid_min", OPT_INT, O(guest_uid_min), "30000", NULL, 1000, 2000000000,
      NULL, 0, "First uid/gid given to guests." },
    { "libvirt", "guest_uid_max", OPT_INT, O(guest_uid_max), "39999", NULL, 1000, 2000000000,
      NULL, 0, "Last uid/gid given to guests." },
    { "libvirt", "live_migration_target_uri", OPT_STR, O(live_migration_target_uri),
      "qemu+tcp://$host/system", NULL, 0, 0, NULL, 0,
      "libvirt URI by which source hosts reach this host's libvirtd to migrate guests to it "
      "(qemu+tls:// for TLS)." },
    { "libvirt", "live_migration_inbound_addr", OPT_STR, O(live_migration_inbound_addr), "", NULL,
      0, 0, NULL, 0,
      "Address that incoming migration data should use (empty: libvirt's migration_host)." },
    { "libvirt", "live_migration_bandwidth", OPT_INT, O(live_migration_bandwidth), "0", NULL, 0,
      1000000, NULL, OPT_RELOAD, "MiB/s cap of a migration (0: the hypervisor's default)." },
    { "libvirt", "live_migration_downtime", OPT_INT, O(live_migration_downtime), "500", NULL, 100,
      2000000, NULL, OPT_RELOAD, "Largest pause (ms) the stepped downtime reaches." },
    { "libvirt", "live_migration_downtime_steps", OPT_INT, O(live_migration_downtime_steps), "10",
      NULL, 3, 1000, NULL, OPT_RELOAD, "Steps to reach live_migration_downtime." },
    { "libvirt", "live_migration_downtime_delay", OPT_INT, O(live_migration_downtime_delay), "75",
      NULL, 3, 86400, NULL, OPT_RELOAD, "Seconds per GiB of data between downtime steps." },
    { "libvirt", "live_migration_completion_timeout", OPT_INT,
      O(live_migration_completion_timeout), "800", NULL, 0, 86400, NULL, OPT_RELOAD,
      "Seconds per GiB of data a migration may take before live_migration_timeout_action "
      "(0 disables)." },
    { "libvirt", "live_migration_timeout_action", OPT_ENUM, O(live_migration_timeout_action),
      "abort", NULL, 0, 0, lm_actions, OPT_RELOAD,
      "abort: cancel the migration; force_complete: switch to post-copy if permitted, else "
      "pause the guest so the copy finishes." },
    { "libvirt", "live_migration_permit_post_copy", OPT_BOOL, O(live_migration_permit_post_copy),
      "false", NULL, 0, 0, NULL, OPT_RELOAD,
      "Allow switching a migration that does not converge to post-copy." },
    { "libvirt", "live_migration_permit_auto_converge", OPT_BOOL,
      O(live_migration_permit_auto_converge), "false", NULL, 0, 0, NULL, OPT_RELOAD,
      "Let QEMU throttle the guest's CPUs so pre-copy converges (not with post-copy)." },
    { "libvirt", "live_migration_with_native_tls", OPT_BOOL, O(live_migration_with_native_tls),
      "false", NULL, 0, 0, NULL, OPT_RELOAD,
      "Encrypt the migration stream (memory and copied disks) with QEMU's own TLS "
      "(VIR_MIGRATE_TLS), using the certificates of qemu.conf's migrate_tls_x509_cert_dir on "
      "both hosts; a migration whose TLS handshake fails is refused, never sent in plain "
      "text (docs/operations.md)." },
    { "libvirt", "live_migration_parallel_connections", OPT_INT,
      O(live_migration_parallel_connections), "1", NULL, 1, 255, NULL, OPT_RELOAD,
      "Parallel connections carrying migration data." },
    { "libvirt", "live_migration_stall_timeout", OPT_INT, O(live_migration_stall_timeout), "150",
      NULL, 0, 86400, NULL, OPT_RELOAD,
      "Seconds without progress on remaining data (smoothed) after which the timeout action "
      "is taken (0 disables)." },
    { "libvirt", "live_migration_progress_interval", OPT_INT, O(live_migration_progress_interval),
      "5", NULL, 1, 3600, NULL, OPT_RELOAD,
      "Seconds between progress records (migrations row, notification, log line)." },

    { "image_cache", "manager_interval", OPT_INT, O(image_cache_manager_interval), "2400", NULL,
      0, 86400 * 7, NULL, OPT_RELOAD, "Seconds between cache aging passes (0 disables)." },
    { "image_cache", "remove_unused_base_images", OPT_BOOL, O(remove_unused_base_images), "true",
      NULL, 0, 0, NULL, OPT_RELOAD, "Remove cached images no instance uses." },
    { "image_cache", "remove_unused_original_minimum_age_seconds", OPT_INT,
      O(remove_unused_original_minimum_age_seconds), "86400", NULL, 0, BIG, NULL, OPT_RELOAD,
      "A cached image is removed only when unused and untouched for this long. A build's "
      "check of a cached image stands for the next builds of it for a tenth of this, at most "
      "60 s; 0: every build checks (docs/operations.md)." },
    { "image_cache", "subdirectory_name", OPT_STR, O(image_cache_subdirectory_name), "_base",
      NULL, 0, 0, NULL, 0, "Folder of instances_path that holds the cached images." },
    { "image_cache", "max_image_size_gb", OPT_INT, O(image_max_size_gb), "64", NULL, 1, 65536,
      NULL, OPT_RELOAD, "Largest image (download and virtual size) accepted." },
    { "image_cache", "download_timeout", OPT_INT, O(image_download_timeout), "3600", NULL, 1,
      86400, NULL, OPT_RELOAD, "Seconds an image download may take in all." },
    { "image_cache", "download_low_speed_timeout", OPT_INT, O(image_download_low_speed_timeout),
      "60", NULL, 1, 3600, NULL, OPT_RELOAD,
      "Abort a download that moved less than 1 KiB/s for this many seconds." },
    { "image_cache", "ca_file", OPT_STR, O(image_ca_file), "", NULL, 0, 0, NULL, OPT_RELOAD,
      "CA bundle for https:// image URLs (empty: the system's)." },

    { "api", "listen", OPT_STR, O(api_listen), "127.0.0.1:8775", NULL, 0, 0, NULL, 0,
      "Address:port of the HTTP status endpoint (/healthz, /readyz, /metrics): an IPv4 "
      "address, [IPv6], or none (\":8775\": every address, IPv6 and IPv4); empty disables "
      "it." },

    { "network", "physical_interface_mappings", OPT_LIST, O(net_physical_interface_mappings), "",
      NULL, 0, 0, NULL, 0,
      "Comma-separated physnet:interface pairs: the host interface each physical network "
      "of a port (physical_network) uses as the uplink of its bridges (a flat network's "
      "bridge takes the interface itself, a VLAN network's its 802.1Q sub-interface)." },
    { "network", "default_mtu", OPT_INT, O(net_default_mtu), "1500", NULL, 576, 9216, NULL, 0,
      "MTU of a network whose ports state none." },

    { "storage", "nfs_driver", OPT_ENUM, O(nfs_driver), "kernel", NULL, 0, 0, vol_drivers, 0,
      "kernel: NFS volumes are mounted on the host (one mount per export, shared by its "
      "volumes); qemu: QEMU's own NFS client (libnfs) reads them, for hosts without a kernel "
      "client." },
    { "storage", "iscsi_driver", OPT_ENUM, O(iscsi_driver), "kernel", NULL, 0, 0, vol_drivers,
      0,
      "kernel: open-iscsi logs in and the guest gets the device (or multipath map); qemu: "
      "QEMU's own initiator (libiscsi), one path, for hosts without an initiator." },
    { "storage", "use_multipath", OPT_BOOL, O(use_multipath), "false", NULL, 0, 0, NULL, 0,
      "Kernel iSCSI: log in to every portal a volume lists and give the guest the "
      "dm-multipath map of its paths (multipathd must run)." },
    { "storage", "nfs_mount_point_base", OPT_STR, O(nfs_mount_point_base), "$state_path/mnt",
      NULL, 0, 0, NULL, 0, "Folder under which the kernel driver mounts NFS exports." },
    { "storage", "nfs_mount_options", OPT_STR, O(nfs_mount_options), "", NULL, 0, 0, NULL, 0,
      "Mount options added to every NFS mount (e.g. timeo=600,retrans=2)." },
    { "storage", "iscsi_initiator_name", OPT_STR, O(iscsi_initiator_name), "", NULL, 0, 0, NULL,
      0,
      "This host's iSCSI initiator name (empty: InitiatorName of "
      "/etc/iscsi/initiatorname.iscsi, else iqn.2010-10.org.virtnode:<host>)." },
    { "storage", "volume_command_timeout", OPT_INT, O(volume_command_timeout), "60", NULL, 1,
      3600, NULL, OPT_RELOAD, "Seconds an iscsiadm, multipath or mount command may take." },
    { "storage", "volume_attach_timeout", OPT_INT, O(volume_attach_timeout), "30", NULL, 1, 3600,
      NULL, OPT_RELOAD, "Seconds to wait for a volume's device or multipath map to appear." },
    { "storage", "volume_probe_interval", OPT_INT, O(volume_probe_interval), "10", NULL, 0,
      3600, NULL, 0,
      "Seconds between probes of the storage the guests' volumes are on (0 disables). A "
      "storage that fails its probe pauses only the guests on it, until it answers again." },
    { "storage", "volume_attempts", OPT_INT, O(volume_attempts), "3", NULL, 1, 20, NULL,
      OPT_RELOAD, "Tries of a login, scan or mount before a connect fails." },
};
/* clang-format on */

static const char *const sections[] = { "DEFAULT", "amqp",    "database", "libvirt", "image_cache",
                                        "api",     "network", "storage",  NULL };

static VnConfigCheckFunc checks[G_N_ELEMENTS(opts)];

static const OptDef *opt_find(const char *section, const char *key, gsize *index)
{
    for (gsize i = 0; i < G_N_ELEMENTS(opts); i++) {
        if (strcmp(opts[i].section, section) == 0 && strcmp(opts[i].key, key) == 0) {
            if (index)
                *index = i;
            return &opts[i];
        }
    }
    return NULL;
}

void vn_config_set_check(const char *section, const char *key, VnConfigCheckFunc check)
{
    gsize i;

    if (!opt_find(section, key, &i))
        g_error("no option [%s] %s to check", section, key);
    checks[i] = check;
}

static void *field(VnConfig *cfg, const OptDef *o)
{
    return (char *)cfg + o->offset;
}

static const void *cfield(const VnConfig *cfg, const OptDef *o)
{
    return (const char *)cfg + o->offset;
}

/* Bounds of $name expansion: a value refers to at most EXPAND_MAX_REFS options in all
 * (nested ones included) and expands to at most EXPAND_MAX_BYTES.  Without them a few
 * dozen bytes of mutually referring options took gigabytes and minutes. */
#define EXPAND_MAX_REFS  64
#define EXPAND_MAX_BYTES 65536

typedef struct {
    int refs_left;
    gboolean overflow;
} ExpandBudget;

static void expand_into(GString *out, const char *text, GHashTable *raw, int depth, ExpandBudget *b)
{
    const char *p = text;

    while (*p && !b->overflow) {
        if (*p == '$' && (g_ascii_isalpha(p[1]) || p[1] == '_') && depth < 8) {
            const char *s = p + 1;
            while (g_ascii_isalnum(*s) || *s == '_')
                s++;
            g_autofree char *name = g_strndup(p + 1, s - (p + 1));
            const char *val = g_hash_table_lookup(raw, name);
            if (val) {
                if (--b->refs_left < 0) {
                    b->overflow = TRUE;
                    return;
                }
                expand_into(out, val, raw, depth + 1, b);
                p = s;
                continue;
            }
        }
        g_string_append_c(out, *p++);
        if (out->len > EXPAND_MAX_BYTES)
            b->overflow = TRUE;
    }
}

/* Expands $name references to [DEFAULT] options in @text, using the raw texts in @raw;
 * NULL when the bounds above are passed. */
static char *expand(const char *text, GHashTable *raw, int depth)
{
    GString *out = g_string_new(NULL);
    ExpandBudget b = { EXPAND_MAX_REFS, FALSE };

    expand_into(out, text, raw, depth, &b);
    if (b.overflow) {
        g_string_free(out, TRUE);
        return NULL;
    }
    return g_string_free(out, FALSE);
}

static gboolean parse_int(const char *s, gint64 *out)
{
    char *end = NULL;

    errno = 0;
    gint64 v = g_ascii_strtoll(s, &end, 10);
    if (errno || end == s || *end != '\0')
        return FALSE;
    *out = v;
    return TRUE;
}

static gboolean parse_value(VnConfig *cfg, const OptDef *o, const char *text, GError **error)
{
    g_autofree char *s = g_strstrip(g_strdup(text));

    switch (o->type) {
    case OPT_STR:
        /* a second parse (the default after a bad value) replaces the first */
        g_free(*(char **)field(cfg, o));
        *(char **)field(cfg, o) = g_steal_pointer(&s);
        return TRUE;
    case OPT_LIST: {
        g_auto(GStrv) parts = g_strsplit(s, ",", -1);
        GPtrArray *list = g_ptr_array_new();
        for (char **p = parts; *p; p++) {
            g_strstrip(*p);
            if (**p)
                g_ptr_array_add(list, g_strdup(*p));
        }
        g_ptr_array_add(list, NULL);
        g_strfreev(*(char ***)field(cfg, o));
        *(char ***)field(cfg, o) = (char **)g_ptr_array_free(list, FALSE);
        return TRUE;
    }
    case OPT_INT: {
        gint64 v;
        if (!parse_int(s, &v)) {
            g_set_error(error, VN_CONFIG_ERROR, VN_CONFIG_ERROR_VALUE, "'%s' is not an integer", s);
            return FALSE;
        }
        if (v < (gint64)o->min || v > (gint64)o->max) {
            g_set_error(error, VN_CONFIG_ERROR, VN_CONFIG_ERROR_VALUE,
                        "%" G_GINT64_FORMAT " is out of range [%.0f, %.0f]", v, o->min, o->max);
            return FALSE;
        }
        *(int *)field(cfg, o) = (int)v;
        return TRUE;
    }
    case OPT_DOUBLE: {
        char *end = NULL;
        errno = 0;
        double v = g_ascii_strtod(s, &end);
        if (errno || end == s || *end != '\0' || !isfinite(v)) {
            g_set_error(error, VN_CONFIG_ERROR, VN_CONFIG_ERROR_VALUE, "'%s' is not a number", s);
            return FALSE;
        }
        if (v < o->min || v > o->max) {
            g_set_error(error, VN_CONFIG_ERROR, VN_CONFIG_ERROR_VALUE,
                        "%g is out of range [%g, %g]", v, o->min, o->max);
            return FALSE;
        }
        *(double *)field(cfg, o) = v;
        return TRUE;
    }
    case OPT_BOOL: {
        static const char *const yes[] = { "true", "yes", "on", "1", NULL };
        static const char *const no[] = { "false", "no", "off", "0", NULL };
        g_autofree char *low = g_ascii_strdown(s, -1);
        if (g_strv_contains(yes, low)) {
            *(gboolean *)field(cfg, o) = TRUE;
            return TRUE;
        }
        if (g_strv_contains(no, low)) {
            *(gboolean *)field(cfg, o) = FALSE;
            return TRUE;
        }
        g_set_error(error, VN_CONFIG_ERROR, VN_CONFIG_ERROR_VALUE,
                    "'%s' is not a boolean (true/false)", s);
        return FALSE;
    }
    case OPT_ENUM:
        for (int i = 0; o->choices[i]; i++) {
            if (strcmp(o->choices[i], s) == 0) {
                *(int *)field(cfg, o) = i;
                return TRUE;
            }
        }
        g_autofree char *all = g_strjoinv(", ", (char **)o->choices);
        g_set_error(error, VN_CONFIG_ERROR, VN_CONFIG_ERROR_VALUE, "'%s' is not one of: %s", s,
                    all);
        return FALSE;
    }
    g_assert_not_reached();
}

static void free_fields(VnConfig *cfg)
{
    for (gsize i = 0; i < G_N_ELEMENTS(opts); i++) {
        if (opts[i].type == OPT_STR)
            g_clear_pointer((char **)field(cfg, &opts[i]), g_free);
        else if (opts[i].type == OPT_LIST)
            g_clear_pointer((char ***)field(cfg, &opts[i]), g_strfreev);
    }
    g_free(cfg->source);
}

VnConfig *vn_config_ref(VnConfig *cfg)
{
    return g_atomic_rc_box_acquire(cfg);
}

void vn_config_unref(VnConfig *cfg)
{
    if (cfg)
        g_atomic_rc_box_release_full(cfg, (GDestroyNotify)free_fields);
}

static void add_problem(GString *problems, const char *name, const char *section, const char *key,
                        const char *what)
{
    if (problems->len)
        g_string_append_c(problems, '\n');
    if (key)
        g_string_append_printf(problems, "%s: [%s] %s: %s", name, section, key, what);
    else
        g_string_append_printf(problems, "%s: [%s]: %s", name, section, what);
}

/* Cross-option rules that one row cannot express. */
static void check_relations(const VnConfig *cfg, const char *name, GString *problems)
{
    if (cfg->guest_uid_max < cfg->guest_uid_min)
        add_problem(problems, name, "libvirt", "guest_uid_max",
                    "must not be lower than guest_uid_min");
    if (cfg->amqp_reconnect_interval_max < cfg->amqp_reconnect_interval)
        add_problem(problems, name, "amqp", "reconnect_interval_max",
                    "must not be lower than reconnect_interval");
    if (!cfg->amqp_transport_url || !cfg->amqp_transport_url[0])
        add_problem(problems, name, "amqp", "transport_url", "at least one URL is needed");
    if (cfg->cpu_mode == VN_CPU_MODE_CUSTOM && !*cfg->cpu_model)
        add_problem(problems, name, "libvirt", "cpu_model", "cpu_mode = custom needs a model");
    if (!*cfg->amqp_control_exchange || !*cfg->amqp_topic)
        add_problem(problems, name, "amqp", "topic", "exchange and topic must not be empty");
    if (!g_path_is_absolute(cfg->state_path))
        add_problem(problems, name, "DEFAULT", "state_path", "must be an absolute path");
    if (!g_path_is_absolute(cfg->instances_path))
        add_problem(problems, name, "DEFAULT", "instances_path", "must be an absolute path");
    if (!g_path_is_absolute(cfg->nfs_mount_point_base))
        add_problem(problems, name, "storage", "nfs_mount_point_base", "must be an absolute path");
    for (const char *c = cfg->nfs_mount_options; *c; c++) {
        if (!g_ascii_isalnum(*c) && !strchr("._:/=,-", *c)) {
            add_problem(problems, name, "storage", "nfs_mount_options",
                        "comma-separated key[=value] options only");
            break;
        }
    }
    if (strchr(cfg->image_cache_subdirectory_name, '/') || !*cfg->image_cache_subdirectory_name ||
        strcmp(cfg->image_cache_subdirectory_name, "..") == 0)
        add_problem(problems, name, "image_cache", "subdirectory_name",
                    "must be a plain folder name");
}

static gboolean host_name_valid(const char *h)
{
    if (!*h || strlen(h) > 255)
        return FALSE;
    for (const char *p = h; *p; p++) {
        if (!g_ascii_isalnum(*p) && *p != '-' && *p != '.' && *p != '_')
            return FALSE;
    }
    return TRUE;
}

static VnConfig *load_keyfile(GKeyFile *kf, const char *name, GError **error)
{
    g_autoptr(GString) problems = g_string_new(NULL);
    g_autoptr(GHashTable) raw = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, g_free);
    VnConfig *cfg = g_atomic_rc_box_new0(VnConfig);

    /* unknown sections and keys first: a typo must never pass silently */
    if (kf) {
        g_auto(GStrv) groups = g_key_file_get_groups(kf, NULL);
        for (char **g = groups; *g; g++) {
            if (!g_strv_contains(sections, *g)) {
                add_problem(problems, name, *g, NULL, "unknown section");
                continue;
            }
            g_auto(GStrv) keys = g_key_file_get_keys(kf, *g, NULL, NULL);
            for (char **k = keys; k && *k; k++) {
                if (!opt_find(*g, *k, NULL))
                    add_problem(problems, name, *g, *k, "unknown option");
            }
        }
    }

    /* raw [DEFAULT] texts, for $name expansion */
    for (gsize i = 0; i < G_N_ELEMENTS(opts); i++) {
        if (strcmp(opts[i].section, "DEFAULT") != 0)
            continue;
        char *v = kf ? g_key_file_get_string(kf, "DEFAULT", opts[i].key, NULL) : NULL;
        if (!v || !*v) {
            g_free(v);
            v = g_strdup(opts[i].def);
        }
        if (strcmp(opts[i].key, "host") == 0 && !*v) {
            g_free(v);
            v = g_strdup(g_get_host_name());
        }
        g_hash_table_insert(raw, (gpointer)opts[i].key, v);
    }

    for (gsize i = 0; i < G_N_ELEMENTS(opts); i++) {
        const OptDef *o = &opts[i];
        g_autoptr(GError) err = NULL;
        g_autofree char *text = NULL;
        g_autofree char *given = NULL;

        if (kf && g_key_file_has_key(kf, o->section, o->key, NULL)) {
            given = g_key_file_get_string(kf, o->section, o->key, &err);
            if (!given) {
                /* not UTF-8, a bad escape: reported, and the default keeps the struct whole */
                add_problem(problems, name, o->section, o->key, err->message);
                g_clear_error(&err);
                text = expand(o->def, raw, 0);
                parse_value(cfg, o, text ? text : o->def, NULL);
                continue;
            }
        }
        text = expand(given ? given : o->def, raw, 0);
        if (!text) {
            add_problem(
                problems, name, o->section, o->key,
                "$name references expand beyond " G_STRINGIFY(
                    EXPAND_MAX_REFS) " references or " G_STRINGIFY(EXPAND_MAX_BYTES) " bytes");
            text = g_strdup(o->def);
            parse_value(cfg, o, text, NULL);
            continue;
        }
        if (strcmp(o->key, "host") == 0 && strcmp(o->section, "DEFAULT") == 0 && !*text) {
            g_free(text);
            text = g_strdup(g_get_host_name());
        }
        if (!parse_value(cfg, o, text, &err) || (checks[i] && !checks[i](text, &err))) {
            add_problem(problems, name, o->section, o->key, err->message);
            /* keep the struct complete so free_fields and later checks stay simple */
            g_clear_error(&err);
            if (o->type == OPT_STR || o->type == OPT_LIST || o->type == OPT_ENUM) {
                g_autofree char *d = expand(o->def, raw, 0);
                parse_value(cfg, o, d ? d : o->def, NULL);
            }
        }
    }
    if (!host_name_valid(cfg->host))
        add_problem(problems, name, "DEFAULT", "host",
                    "must be 1-255 letters, digits, '-', '.' or '_'");
    if (problems->len == 0)
        check_relations(cfg, name, problems);

    if (problems->len) {
        g_set_error_literal(error, VN_CONFIG_ERROR,
                            strstr(problems->str, "unknown") ? VN_CONFIG_ERROR_UNKNOWN
                                                             : VN_CONFIG_ERROR_VALUE,
                            problems->str);
        vn_config_unref(cfg);
        return NULL;
    }
    return cfg;
}

VnConfig *vn_config_load_data(const char *data, gsize len, const char *name, GError **error)
{
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autoptr(GError) err = NULL;
    VnConfig *cfg;

    if (!g_key_file_load_from_data(kf, data, len, G_KEY_FILE_NONE, &err)) {
        g_set_error(error, VN_CONFIG_ERROR, VN_CONFIG_ERROR_READ, "%s: %s", name, err->message);
        return NULL;
    }
    cfg = load_keyfile(kf, name, error);
    if (cfg)
        cfg->source = g_strdup(name);
    return cfg;
}

VnConfig *vn_config_load(const char *path, GError **error)
{
    g_autofree char *data = NULL;
    g_autoptr(GError) err = NULL;
    gsize len = 0;

    if (!path)
        return load_keyfile(NULL, "(defaults)", error);
    if (!g_file_get_contents(path, &data, &len, &err)) {
        g_set_error(error, VN_CONFIG_ERROR, VN_CONFIG_ERROR_READ, "%s: %s", path, err->message);
        return NULL;
    }
    return vn_config_load_data(data, len, path, error);
}

/* The value of @o in @cfg as configuration text. */
static char *value_text(const VnConfig *cfg, const OptDef *o)
{
    const void *f = cfield(cfg, o);

    switch (o->type) {
    case OPT_STR:
        return g_strdup(*(char *const *)f ? *(char *const *)f : "");
    case OPT_LIST:
        return *(char **const *)f ? g_strjoinv(", ", *(char **const *)f) : g_strdup("");
    case OPT_INT:
        return g_strdup_printf("%d", *(const int *)f);
    case OPT_DOUBLE: {
        char buf[G_ASCII_DTOSTR_BUF_SIZE];
        return g_strdup(g_ascii_dtostr(buf, sizeof(buf), *(const double *)f));
    }
    case OPT_BOOL:
        return g_strdup(*(const gboolean *)f ? "true" : "false");
    case OPT_ENUM:
        return g_strdup(o->choices[*(const int *)f]);
    }
    g_assert_not_reached();
}

static char *shown(const OptDef *o, const char *text)
{
    return (o->flags & OPT_SECRET) ? vn_log_mask_secrets(text) : g_strdup(text);
}

char *vn_config_dump(const VnConfig *cfg)
{
    GString *out = g_string_new(NULL);
    const char *section = NULL;

    g_string_append_printf(out, "# virtnode %s configuration, from %s\n", VIRTNODE_VERSION,
                           cfg->source ? cfg->source : "defaults only");
    for (gsize i = 0; i < G_N_ELEMENTS(opts); i++) {
        const OptDef *o = &opts[i];
        g_autofree char *val = value_text(cfg, o);
        g_autofree char *v = shown(o, val);
        g_autofree char *d = shown(o, o->doc_default ? o->doc_default : o->def);

        if (!section || strcmp(section, o->section) != 0) {
            section = o->section;
            g_string_append_printf(out, "\n[%s]\n", section);
        }
        g_string_append_printf(out, "# default: %s\n%s = %s\n", *d ? d : "(empty)", o->key, v);
    }
    return g_string_free(out, FALSE);
}

static const char *type_name(const OptDef *o)
{
    switch (o->type) {
    case OPT_STR:
        return "string";
    case OPT_LIST:
        return "list";
    case OPT_INT:
        return "integer";
    case OPT_DOUBLE:
        return "number";
    case OPT_BOOL:
        return "boolean";
    case OPT_ENUM:
        return "choice";
    }
    return "?";
}

char *vn_config_reference_markdown(void)
{
    GString *out = g_string_new(NULL);

    g_string_append(
        out, "# Configuration reference\n\n"
             "<!-- Generated by `virtnoded --config-reference`; do not edit. CI checks that this "
             "file is current. -->\n\n"
             "virtnoded reads one INI file (default `" VN_CONFIG_DEFAULT_PATH "`, or "
             "`--config FILE`). An unknown section or option, or a value of the wrong type or "
             "out of bounds, is an error that names the file, section and option; "
             "`virtnoded --check-config` then exits with status 2. `$name` in a value stands "
             "for the `[DEFAULT]` option `name` (at most 64 references and 64 KiB once expanded). "
             "Options marked *reload* take effect on "
             "SIGHUP; the others need a restart. `virtnoded --dump-config` prints every option "
             "with its value and default.\n");
    for (const char *const *s = sections; *s; s++) {
        g_string_append_printf(out, "\n## [%s]\n\n", *s);
        g_string_append(out, "| option | type | default | allowed | reload | description |\n"
                             "|---|---|---|---|---|---|\n");
        for (gsize i = 0; i < G_N_ELEMENTS(opts); i++) {
            const OptDef *o = &opts[i];
            g_autofree char *allowed = NULL;
            const char *def = o->doc_default ? o->doc_default : o->def;

            if (strcmp(o->section, *s) != 0)
                continue;
            if (o->type == OPT_ENUM)
                allowed = g_strjoinv(", ", (char **)o->choices);
            else if (o->type == OPT_INT)
                allowed = g_strdup_printf("%.0f – %.0f", o->min, o->max);
            else if (o->type == OPT_DOUBLE)
                allowed = g_strdup_printf("%g – %g", o->min, o->max);
            else
                allowed = g_strdup("");
            g_string_append_printf(out, "| `%s` | %s | %s%s%s | %s | %s | %s |\n", o->key,
                                   type_name(o), *def ? "`" : "", *def ? def : "(empty)",
                                   *def ? "`" : "", allowed, (o->flags & OPT_RELOAD) ? "yes" : "",
                                   o->help);
        }
    }
    return g_string_free(out, FALSE);
}

char **vn_config_restart_needed(const VnConfig *a, const VnConfig *b)
{
    GPtrArray *names = g_ptr_array_new();

    for (gsize i = 0; i < G_N_ELEMENTS(opts); i++) {
        if (opts[i].flags & OPT_RELOAD)
            continue;
        g_autofree char *va = value_text(a, &opts[i]);
        g_autofree char *vb = value_text(b, &opts[i]);
        if (strcmp(va, vb) != 0)
            g_ptr_array_add(names, g_strdup_printf("[%s] %s", opts[i].section, opts[i].key));
    }
    g_ptr_array_add(names, NULL);
    return (char **)g_ptr_array_free(names, FALSE);
}

/* Copies option @o's value from @from into @to (whose old value is freed). */
static void copy_value(VnConfig *to, const VnConfig *from, const OptDef *o)
{
    void *t = field(to, o);
    const void *f = cfield(from, o);

    switch (o->type) {
    case OPT_STR:
        g_free(*(char **)t);
        *(char **)t = g_strdup(*(char *const *)f);
        break;
    case OPT_LIST:
        g_strfreev(*(char ***)t);
        *(char ***)t = g_strdupv(*(char **const *)f);
        break;
    case OPT_DOUBLE:
        *(double *)t = *(const double *)f;
        break;
    case OPT_INT:
    case OPT_BOOL:
    case OPT_ENUM:
        *(int *)t = *(const int *)f;
        break;
    }
}

char **vn_config_reload_merge(VnConfig *next, const VnConfig *running)
{
    g_auto(GStrv) changed = vn_config_restart_needed(running, next);

    for (gsize i = 0; i < G_N_ELEMENTS(opts); i++) {
        if (!(opts[i].flags & OPT_RELOAD))
            copy_value(next, running, &opts[i]);
    }
    return g_steal_pointer(&changed);
}

const char *vn_virt_type_name(VnVirtType t)
{
    return t < VN_VIRT_TYPE_LAST ? virt_types[t] : "?";
}
