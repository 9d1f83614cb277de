"""The class table of the data model: plain data, read by :mod:`common.schema`.

Names, types, qualifiers and defaults follow xapi's ``ocaml/idl/datamodel*.ml``; the
one-to-many sets follow its ``all_relations``. A subset of each class's fields is kept.

A field is written ``f(path, type, qualifier, **options)``:

- ``path`` is xapi's namespaced name with ``/`` between the parts: ``"name/label"`` is the
  API field ``name_label`` and the state.db column ``name__label``.
- ``type`` is one of ``common.schema.TYPES``.
- the qualifier is ``RO`` (xapi's DynamicRO and StaticRO: no API setter) or ``RW``.
- options: ``default`` (else the type's zero: ``""``, 0, 0.0, false, the epoch, the first
  enum value, ``OpaqueRef:NULL``, empty set, empty map), ``persist=False``, ``ref`` (the
  class a ref or a set of refs points at), ``item`` (the element type of a set, the value
  type of a map), ``enum`` (the values of an enum, or of a set/map of enums),
  ``required=True`` (a ref whose dangling makes the GC delete the row).

``many(path, other_class, other_field)`` is a one-to-many set derived from the ref
``other_class.other_field`` (``host.PIFs`` is ``many("PIFs", "PIF", "host")``): read-only,
not persisted, rebuilt from the other side.
"""

RO, RW = True, False


def f(path, type, qualifier, **options):
    return (path, type, qualifier, options)


def ref(path, cls, qualifier=RO, **options):
    return f(path, "ref", qualifier, ref=cls, **options)


def many(path, other_class, other_field):
    return f(path, "set", RO, item="ref", ref=other_class, derived=(other_class, other_field),
             persist=False)


def uuid():
    return f("uuid", "string", RO)


def names(qualifier):
    return [f("name/label", "string", qualifier), f("name/description", "string", qualifier)]


def operations(values):
    """xapi's allowed_and_current_operations: not persisted, maps task refs to operations."""
    return [f("allowed_operations", "set", RO, item="enum", enum=values, persist=False),
            f("current_operations", "map", RO, item="enum", enum=values, persist=False)]


def other_config():
    return f("other_config", "map", RW)


def cls(name, *fields, persist=True):
    flat = []
    for item in fields:
        flat.extend(item if isinstance(item, list) else [item])
    return (name, flat, persist)


# --- enums (xapi's names and values) ---------------------------------------------------
HOST_OPERATIONS = ("provision", "evacuate", "shutdown", "reboot", "power_on", "vm_start",
                   "vm_resume", "vm_migrate")
VM_OPERATIONS = (
    "snapshot", "clone", "copy", "create_template", "revert", "checkpoint",
    "snapshot_with_quiesce", "provision", "start", "start_on", "pause", "unpause",
    "clean_shutdown", "clean_reboot", "hard_shutdown", "power_state_reset", "hard_reboot",
    "suspend", "csvm", "resume", "resume_on", "pool_migrate", "migrate_send",
    "get_boot_record", "send_sysrq", "send_trigger", "query_services", "shutdown",
    "call_plugin", "changing_memory_live", "awaiting_memory_live", "changing_dynamic_range",
    "changing_static_range", "changing_memory_limits", "changing_shadow_memory",
    "changing_shadow_memory_live", "changing_VCPUs", "changing_VCPUs_live",
    "assert_operation_valid", "data_source_op", "update_allowed_operations",
    "make_into_template", "import", "export", "metadata_export", "reverting", "destroy")
VM_POWER_STATE = ("Halted", "Paused", "Running", "Suspended")
ON_NORMAL_EXIT = ("destroy", "restart")
ON_CRASH_BEHAVIOUR = ("destroy", "coredump_and_destroy", "restart", "coredump_and_restart",
                      "preserve", "rename_restart")
VBD_OPERATIONS = ("attach", "eject", "insert", "plug", "unplug", "unplug_force", "pause",
                  "unpause")
VBD_MODE = ("RO", "RW")
VBD_TYPE = ("CD", "Disk", "Floppy")
VDI_OPERATIONS = ("scan", "clone", "copy", "resize", "resize_online", "snapshot", "destroy",
                  "forget", "update", "force_unlock", "generate_config", "blocked")
VDI_TYPE = ("system", "user", "ephemeral", "suspend", "crashdump", "ha_statefile", "metadata",
            "redo_log", "rrd", "pvs_cache", "cbt_metadata")
VDI_ON_BOOT = ("reset", "persist")
STORAGE_OPERATIONS = ("scan", "destroy", "forget", "plug", "unplug", "update", "vdi_create",
                      "vdi_introduce", "vdi_destroy", "vdi_resize", "vdi_clone",
                      "vdi_snapshot", "pbd_create", "pbd_destroy")
IP_CONFIGURATION_MODE = ("None", "DHCP", "Static")
NETWORK_OPERATIONS = ("attaching",)
NETWORK_DEFAULT_LOCKING_MODE = ("unlocked", "disabled")
VIF_OPERATIONS = ("attach", "plug", "unplug", "unplug_force")
VIF_LOCKING_MODE = ("network_default", "locked", "unlocked", "disabled")
BOND_MODE = ("balance-slb", "active-backup", "lacp")
CONSOLE_PROTOCOL = ("vt100", "rfb", "rdp")
AFTER_APPLY_GUIDANCE = ("restartHVM", "restartPV", "restartHost", "restartXAPI")
TASK_STATUS = ("pending", "success", "failure", "cancelling", "cancelled")
TASK_OPERATIONS = ("cancel",)


def qos():
    return [f("qos/algorithm_type", "string", RW), f("qos/algorithm_params", "map", RW),
            f("qos/supported_algorithms", "set", RO)]


def device_status():
    return [f("currently_attached", "bool", RO), f("status_code", "int", RO),
            f("status_detail", "string", RO), f("runtime_properties", "map", RO)]


# --- the classes -------------------------------------------------------------------------
CLASS_TABLE = [
    cls("pool",
        uuid(),
        # pool's names are plain fields in xapi, not a "name" namespace: columns name_label...
        f("name_label", "string", RW), f("name_description", "string", RW),
        ref("master", "host"),
        ref("default_SR", "SR", RW), ref("suspend_image_SR", "SR", RW),
        ref("crash_dump_SR", "SR", RW),
        other_config(),
        f("ha_enabled", "bool", RO), f("ha_configuration", "map", RO),
        f("ha_statefiles", "set", RO), f("ha_host_failures_to_tolerate", "int", RO),
        f("ha_plan_exists_for", "int", RO), f("ha_allow_overcommit", "bool", RW),
        f("ha_overcommitted", "bool", RO),
        f("tags", "set", RW), f("gui_config", "map", RW),
        f("wlb_url", "string", RO), f("wlb_username", "string", RO),
        f("wlb_enabled", "bool", RW), f("wlb_verify_cert", "bool", RW),
        f("redo_log_enabled", "bool", RO), ref("redo_log_vdi", "VDI"),
        f("vswitch_controller", "string", RO), f("restrictions", "map", RO),
        many("metadata_VDIs", "VDI", "metadata_of_pool")),

    cls("host",
        uuid(), names(RW),
        f("memory/overhead", "int", RO),
        operations(HOST_OPERATIONS),
        f("API_version/major", "int", RO), f("API_version/minor", "int", RO),
        f("API_version/vendor", "string", RO),
        f("API_version/vendor_implementation", "map", RO),
        f("enabled", "bool", RO), f("software_version", "map", RO), other_config(),
        f("capabilities", "set", RO), f("cpu_configuration", "map", RO),
        f("sched_policy", "string", RO), f("supported_bootloaders", "set", RO),
        many("resident_VMs", "VM", "resident_on"),
        f("logging", "map", RW),
        many("PIFs", "PIF", "host"),
        ref("suspend_image_sr", "SR", RW), ref("crash_dump_sr", "SR", RW),
        many("crashdumps", "host_crashdump", "host"),
        many("patches", "host_patch", "host"),
        many("PBDs", "PBD", "host"),
        many("host_CPUs", "host_cpu", "host"),
        f("cpu_info", "map", RO),
        f("hostname", "string", RW), f("address", "string", RW),
        ref("metrics", "host_metrics"),
        f("license_params", "map", RO),
        f("ha_statefiles", "set", RO), f("ha_network_peers", "set", RO),
        f("tags", "set", RW),
        f("external_auth_type", "string", RO), f("external_auth_service_name", "string", RO),
        f("external_auth_configuration", "map", RO),
        f("edition", "string", RO),
        f("license_server", "map", RW, default={"address": "localhost", "port": "27000"}),
        f("bios_strings", "map", RO),
        f("power_on_mode", "string", RO), f("power_on_config", "map", RO),
        ref("local_cache_sr", "SR"), f("chipset_info", "map", RO)),

    cls("host_metrics",
        uuid(),
        f("memory/total", "int", RO), f("memory/free", "int", RO),
        f("live", "bool", RO), f("last_updated", "datetime", RO), other_config()),

    cls("host_cpu",
        uuid(), ref("host", "host"),
        f("number", "int", RO), f("vendor", "string", RO), f("speed", "int", RO),
        f("modelname", "string", RO), f("family", "int", RO), f("model", "int", RO),
        f("stepping", "string", RO), f("flags", "string", RO), f("features", "string", RO),
        f("utilisation", "float", RO, persist=False), other_config()),

    cls("host_crashdump",
        uuid(), ref("host", "host"),
        f("timestamp", "datetime", RO), f("size", "int", RO), other_config()),

    cls("host_patch",
        uuid(), names(RO),
        f("version", "string", RO), ref("host", "host"),
        f("applied", "bool", RO), f("timestamp_applied", "datetime", RO),
        f("size", "int", RO), ref("pool_patch", "pool_patch"), other_config()),

    cls("pool_patch",
        uuid(), names(RO),
        f("version", "string", RO), f("size", "int", RO), f("pool_applied", "bool", RO),
        many("host_patches", "host_patch", "pool_patch"),
        f("after_apply_guidance", "set", RO, item="enum", enum=AFTER_APPLY_GUIDANCE),
        other_config()),

    cls("VM",
        uuid(),
        operations(VM_OPERATIONS),
        f("power_state", "enum", RO, enum=VM_POWER_STATE),
        names(RW),
        f("user_version", "int", RW), f("is_a_template", "bool", RW),
        f("is_default_template", "bool", RO),
        ref("suspend_VDI", "VDI"), ref("resident_on", "host"),
        ref("scheduled_to_be_resident_on", "host"), ref("affinity", "host", RW),
        f("memory/overhead", "int", RO), f("memory/target", "int", RO),
        f("memory/static_max", "int", RO), f("memory/dynamic_max", "int", RO),
        f("memory/dynamic_min", "int", RO), f("memory/static_min", "int", RO),
        f("VCPUs/params", "map", RW), f("VCPUs/max", "int", RO),
        f("VCPUs/at_startup", "int", RO),
        f("actions/after_shutdown", "enum", RW, enum=ON_NORMAL_EXIT),
        f("actions/after_reboot", "enum", RW, enum=ON_NORMAL_EXIT),
        f("actions/after_crash", "enum", RW, enum=ON_CRASH_BEHAVIOUR),
        many("consoles", "console", "VM"),
        many("VIFs", "VIF", "VM"),
        many("VBDs", "VBD", "VM"),
        f("PV/bootloader", "string", RW), f("PV/kernel", "string", RW),
        f("PV/ramdisk", "string", RW), f("PV/args", "string", RW),
        f("PV/bootloader_args", "string", RW), f("PV/legacy_args", "string", RW),
        f("HVM/boot_policy", "string", RW), f("HVM/boot_params", "map", RW),
        f("HVM/shadow_multiplier", "float", RO, default=1.0),
        f("platform", "map", RW), f("PCI_bus", "string", RW), other_config(),
        # xapi gives domid no default; -1 is its "no domain" value
        f("domid", "int", RO, default=-1), f("domarch", "string", RO),
        f("last_boot_CPU_flags", "map", RO), f("is_control_domain", "bool", RO),
        ref("metrics", "VM_metrics"), ref("guest_metrics", "VM_guest_metrics"),
        f("last_booted_record", "string", RO), f("recommendations", "string", RW),
        f("xenstore_data", "map", RW),
        f("ha_always_run", "bool", RO), f("ha_restart_priority", "string", RO),
        f("is_a_snapshot", "bool", RO), ref("snapshot_of", "VM"),
        many("snapshots", "VM", "snapshot_of"),
        f("snapshot_time", "datetime", RO),
        f("transportable_snapshot_id", "string", RO),
        f("tags", "set", RW),
        f("snapshot_info", "map", RO), f("snapshot_metadata", "string", RO),
        ref("parent", "VM"), many("children", "VM", "parent"),
        f("bios_strings", "map", RO),
        f("start_delay", "int", RO), f("shutdown_delay", "int", RO), f("order", "int", RO),
        ref("suspend_SR", "SR", RW), f("version", "int", RO)),

    cls("VM_metrics",
        uuid(),
        f("memory/actual", "int", RO, persist=False),
        f("VCPUs/number", "int", RO),
        f("VCPUs/params", "map", RO, persist=False),
        f("state", "set", RO, persist=False),
        f("start_time", "datetime", RO), f("install_time", "datetime", RO),
        f("last_updated", "datetime", RO, persist=False),
        f("other_config", "map", RW, persist=False)),

    cls("VM_guest_metrics",
        uuid(),
        f("os_version", "map", RO), f("PV_drivers_version", "map", RO),
        f("PV_drivers_up_to_date", "bool", RO),
        f("memory", "map", RO), f("disks", "map", RO), f("networks", "map", RO),
        f("other", "map", RO), f("last_updated", "datetime", RO), other_config(),
        f("live", "bool", RO)),

    cls("VBD",
        uuid(), operations(VBD_OPERATIONS),
        ref("VM", "VM", required=True), ref("VDI", "VDI"),
        f("device", "string", RO), f("userdevice", "string", RW),
        f("bootable", "bool", RW),
        f("mode", "enum", RW, enum=VBD_MODE), f("type", "enum", RW, enum=VBD_TYPE),
        f("unpluggable", "bool", RW, default=True),
        f("storage_lock", "bool", RO), f("empty", "bool", RO), other_config(),
        device_status(), qos()),

    cls("VDI",
        uuid(), names(RO), operations(VDI_OPERATIONS),
        ref("SR", "SR", required=True),
        many("VBDs", "VBD", "VDI"),
        f("virtual_size", "int", RO), f("physical_utilisation", "int", RO),
        f("type", "enum", RO, enum=VDI_TYPE),
        f("sharable", "bool", RO), f("read_only", "bool", RO), other_config(),
        f("storage_lock", "bool", RO), f("location", "string", RO),
        f("managed", "bool", RO), f("missing", "bool", RO), ref("parent", "VDI"),
        f("xenstore_data", "map", RW), f("sm_config", "map", RW),
        f("is_a_snapshot", "bool", RO), ref("snapshot_of", "VDI"),
        many("snapshots", "VDI", "snapshot_of"),
        f("snapshot_time", "datetime", RO), f("tags", "set", RW),
        f("allow_caching", "bool", RO),
        f("on_boot", "enum", RO, enum=VDI_ON_BOOT, default="persist"),
        ref("metadata_of_pool", "pool"), f("metadata_latest", "bool", RO)),

    cls("SR",
        uuid(), names(RO), operations(STORAGE_OPERATIONS),
        many("VDIs", "VDI", "SR"),
        many("PBDs", "PBD", "SR"),
        f("virtual_allocation", "int", RO), f("physical_utilisation", "int", RO),
        f("physical_size", "int", RO),
        f("type", "string", RO), f("content_type", "string", RO), f("shared", "bool", RO),
        other_config(), f("tags", "set", RW), f("sm_config", "map", RW),
        f("local_cache_enabled", "bool", RO)),

    cls("PBD",
        uuid(),
        ref("host", "host", required=True), ref("SR", "SR", required=True),
        f("device_config", "map", RO), f("currently_attached", "bool", RO), other_config()),

    cls("SM",
        uuid(), names(RO),
        f("type", "string", RO), f("vendor", "string", RO), f("copyright", "string", RO),
        f("version", "string", RO), f("required_api_version", "string", RO),
        f("configuration", "map", RO), f("capabilities", "set", RO), other_config(),
        f("driver_filename", "string", RO)),

    cls("PIF",
        uuid(),
        f("device", "string", RO), ref("network", "network"),
        ref("host", "host", required=True),
        f("MAC", "string", RO), f("MTU", "int", RO),
        # xapi gives VLAN no default; -1 is what it writes for a PIF that is not a VLAN
        f("VLAN", "int", RO, default=-1),
        ref("metrics", "PIF_metrics"),
        f("physical", "bool", RO),
        f("currently_attached", "bool", RO, default=True),
        f("ip_configuration_mode", "enum", RO, enum=IP_CONFIGURATION_MODE),
        f("IP", "string", RO), f("netmask", "string", RO), f("gateway", "string", RO),
        f("DNS", "string", RO),
        ref("bond_slave_of", "Bond"), many("bond_master_of", "Bond", "master"),
        ref("VLAN_master_of", "VLAN"), many("VLAN_slave_of", "VLAN", "tagged_PIF"),
        f("management", "bool", RO), other_config(), f("disallow_unplug", "bool", RW)),

    cls("PIF_metrics",
        uuid(),
        f("io/read_kbs", "float", RO, persist=False),
        f("io/write_kbs", "float", RO, persist=False),
        f("carrier", "bool", RO),
        f("vendor_id", "string", RO), f("vendor_name", "string", RO),
        f("device_id", "string", RO), f("device_name", "string", RO),
        f("speed", "int", RO), f("duplex", "bool", RO), f("pci_bus_path", "string", RO),
        f("last_updated", "datetime", RO), other_config()),

    cls("network",
        uuid(), names(RW), operations(NETWORK_OPERATIONS),
        many("VIFs", "VIF", "network"),
        many("PIFs", "PIF", "network"),
        f("MTU", "int", RW, default=1500), other_config(),
        f("bridge", "string", RO), f("tags", "set", RW),
        f("default_locking_mode", "enum", RO, enum=NETWORK_DEFAULT_LOCKING_MODE)),

    cls("VIF",
        uuid(), operations(VIF_OPERATIONS),
        f("device", "string", RO), ref("network", "network"),
        ref("VM", "VM", required=True),
        f("MAC", "string", RO), f("MTU", "int", RO), other_config(),
        device_status(), qos(),
        f("MAC_autogenerated", "bool", RO),
        f("locking_mode", "enum", RO, enum=VIF_LOCKING_MODE),
        f("ipv4_allowed", "set", RO), f("ipv6_allowed", "set", RO)),

    cls("Bond",
        uuid(),
        ref("master", "PIF"), many("slaves", "PIF", "bond_slave_of"), other_config(),
        ref("primary_slave", "PIF"),
        f("mode", "enum", RO, enum=BOND_MODE), f("properties", "map", RO),
        f("links_up", "int", RO)),

    cls("VLAN",
        uuid(),
        ref("tagged_PIF", "PIF"), ref("untagged_PIF", "PIF"),
        f("tag", "int", RO, default=-1), other_config()),

    cls("console",
        uuid(),
        f("protocol", "enum", RO, enum=CONSOLE_PROTOCOL), f("location", "string", RO),
        ref("VM", "VM"), other_config()),

    cls("task",
        uuid(), names(RO), operations(TASK_OPERATIONS),
        f("created", "datetime", RO), f("finished", "datetime", RO),
        f("status", "enum", RO, enum=TASK_STATUS),
        ref("session", "session"),  # internal in xapi, but the other side of session.tasks
        ref("resident_on", "host"),
        f("progress", "float", RO),
        f("type", "string", RO), f("result", "string", RO), f("error_info", "set", RO),
        other_config(),
        ref("subtask_of", "task"), many("subtasks", "task", "subtask_of"),
        persist=False),

    cls("session",
        uuid(),
        ref("this_host", "host"), ref("this_user", "user"),
        f("last_active", "datetime", RO), f("pool", "bool", RO), other_config(),
        f("is_local_superuser", "bool", RO), f("validation_time", "datetime", RO),
        f("auth_user_sid", "string", RO), f("auth_user_name", "string", RO),
        f("rbac_permissions", "set", RO),
        many("tasks", "task", "session"),
        ref("parent", "session"),
        f("originator", "string", RO),
        persist=False),

    cls("user",
        uuid(),
        f("short_name", "string", RO), f("fullname", "string", RW), other_config()),
]
