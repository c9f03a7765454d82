/* agent/base/config.h - the agent's configuration: one declarative table drives parsing,
 * validation, --dump-config and docs/configuration.md.
 *
 * A VnConfig is immutable once loaded and reference counted: a reload builds a new one
 * and swaps it in, while code holding the old one keeps a consistent view. */
#pragma once

#include <glib.h>

#define VN_CONFIG_DEFAULT_PATH "/etc/virtnode/virtnode.conf"

#define VN_CONFIG_ERROR (vn_config_error_quark())
GQuark vn_config_error_quark(void);

typedef enum {
    VN_CONFIG_ERROR_READ,    /* the file cannot be read or is not an INI file */
    VN_CONFIG_ERROR_UNKNOWN, /* unknown section or key */
    VN_CONFIG_ERROR_VALUE,   /* a value of the wrong type or out of bounds */
    VN_CONFIG_ERROR_LAST
} VnConfigErrorCode;

typedef enum {
    VN_LOG_LEVEL_DEBUG,
    VN_LOG_LEVEL_INFO,
    VN_LOG_LEVEL_WARNING,
    VN_LOG_LEVEL_ERROR,
    VN_LOG_LEVEL_LAST
} VnLogLevel;
typedef enum { VN_LOG_FORMAT_PLAIN, VN_LOG_FORMAT_JSON, VN_LOG_FORMAT_LAST } VnLogFormat;
typedef enum {
    VN_LOG_TARGET_AUTO,
    VN_LOG_TARGET_STDERR,
    VN_LOG_TARGET_JOURNALD,
    VN_LOG_TARGET_LAST
} VnLogTarget;
typedef enum { VN_VIRT_TYPE_KVM, VN_VIRT_TYPE_QEMU, VN_VIRT_TYPE_LAST } VnVirtType;
typedef enum {
    VN_CPU_MODE_DEFAULT, /* host-model for kvm, the hypervisor's default model for qemu */
    VN_CPU_MODE_HOST_MODEL,
    VN_CPU_MODE_HOST_PASSTHROUGH,
    VN_CPU_MODE_CUSTOM,
    VN_CPU_MODE_NONE,
    VN_CPU_MODE_LAST
} VnCpuMode;
typedef enum {
    VN_LM_ACTION_ABORT,
    VN_LM_ACTION_FORCE_COMPLETE,
    VN_LM_ACTION_LAST
} VnLmTimeoutAction;

typedef struct _VnConfig {
    char *source; /* the file it was read from, or NULL when only defaults were used */

    /* [DEFAULT] */
    char *host;
    char *state_path;
    char *instances_path;
    int log_level;  /* VnLogLevel */
    int log_format; /* VnLogFormat */
    int log_target; /* VnLogTarget */
    int graceful_shutdown_timeout;
    int max_concurrent_builds;
    int max_concurrent_live_migrations;
    int max_concurrent_operations;
    int max_queued_per_instance;
    int shutdown_timeout;
    int shutdown_retry_interval;
    int sync_power_state_interval;
    int console_output_max_bytes;
    int report_interval;
    int heartbeat_interval;
    int service_down_time;
    int reserved_host_memory_mb;
    int reserved_host_disk_mb;
    int reserved_host_cpus;
    double cpu_allocation_ratio;
    double ram_allocation_ratio;
    double disk_allocation_ratio;

    /* [amqp] */
    char **amqp_transport_url;
    char *amqp_control_exchange;
    char *amqp_topic;
    int amqp_heartbeat_timeout;
    int amqp_prefetch_count;
    gboolean amqp_durable_queues;
    gboolean amqp_quorum_queues;
    int amqp_transient_queues_ttl;
    char *amqp_dead_letter_exchange;
    int amqp_max_message_bytes;
    int amqp_connect_timeout;
    int amqp_reconnect_interval;
    int amqp_reconnect_interval_max;
    int amqp_reply_timeout;
    int amqp_duplicate_window;
    gboolean amqp_notifications;
    char *amqp_notification_topic;
    int amqp_outbox_limit;
    char *amqp_ssl_ca_file;
    char *amqp_ssl_cert_file;
    char *amqp_ssl_key_file;
    gboolean amqp_ssl_verify_hostname;

    /* [database] */
    char *db_connection;
    char *db_password_file;
    int db_connect_timeout;
    int db_retry_interval;
    int db_retry_interval_max;

    /* [libvirt] */
    char *libvirt_uri;
    int virt_type; /* VnVirtType */
    int cpu_mode;  /* VnCpuMode */
    char *cpu_model;
    int keepalive_interval;
    int keepalive_count;
    int wait_soft_reboot_seconds;
    gboolean require_confinement;
    gboolean per_guest_dac;
    int guest_uid_min;
    int guest_uid_max;
    char *live_migration_target_uri;
    char *live_migration_inbound_addr;
    int live_migration_bandwidth;
    int live_migration_downtime;
    int live_migration_downtime_steps;
    int live_migration_downtime_delay;
    int live_migration_completion_timeout;
    int live_migration_timeout_action; /* VnLmTimeoutAction */
    gboolean live_migration_permit_post_copy;
    gboolean live_migration_permit_auto_converge;
    gboolean live_migration_with_native_tls;
    int live_migration_parallel_connections;
    int live_migration_stall_timeout;
    int live_migration_progress_interval;

    /* [image_cache] */
    int image_cache_manager_interval;
    gboolean remove_unused_base_images;
    int remove_unused_original_minimum_age_seconds;
    char *image_cache_subdirectory_name;
    int image_max_size_gb;
    int image_download_timeout;
    int image_download_low_speed_timeout;
    char *image_ca_file;

    /* [api] */
    char *api_listen;

    /* [network] */
    char **net_physical_interface_mappings;
    int net_default_mtu;

    /* [storage] */
    int nfs_driver;   /* VnVolDriver: 0 kernel, 1 qemu */
    int iscsi_driver; /* VnVolDriver */
    gboolean use_multipath;
    char *nfs_mount_point_base;
    char *nfs_mount_options;
    char *iscsi_initiator_name;
    int volume_command_timeout;
    int volume_attach_timeout;
    int volume_attempts;
    int volume_probe_interval;
} VnConfig;

/* An extra check of one option's text, beyond its type and bounds (e.g. a URL's form).
 * Installed by the daemon before loading so this module needs no other module. */
typedef gboolean (*VnConfigCheckFunc)(const char *value, GError **error);
void vn_config_set_check(const char *section, const char *key, VnConfigCheckFunc check);

/* Loads @path (or only the defaults when @path is NULL).  Every problem names the file,
 * section and key; all problems of the file are reported together in one GError. */
VnConfig *vn_config_load(const char *path, GError **error);

/* Parses configuration text as if read from a file named @name (used by tests, fuzzing). */
VnConfig *vn_config_load_data(const char *data, gsize len, const char *name, GError **error);

VnConfig *vn_config_ref(VnConfig *cfg);
void vn_config_unref(VnConfig *cfg);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnConfig, vn_config_unref)

/* Every option with its current value and default, as a loadable INI text; secrets masked. */
char *vn_config_dump(const VnConfig *cfg);

/* The configuration reference in Markdown: the source of docs/configuration.md. */
char *vn_config_reference_markdown(void);

/* Names of the options whose values differ between @a and @b and that a reload cannot
 * apply ("[section] key"); NULL-terminated, caller frees with g_strfreev. */
char **vn_config_restart_needed(const VnConfig *a, const VnConfig *b);

/* Makes @next, a configuration just loaded for a reload and not yet shared, what a reload
 * may apply: every option not marked reloadable takes its value from @running.  Returns
 * the names of those whose new value was set aside ("[section] key"; NULL-terminated,
 * g_strfreev). */
char **vn_config_reload_merge(VnConfig *next, const VnConfig *running);

const char *vn_virt_type_name(VnVirtType t);
