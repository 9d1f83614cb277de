"""The built-in VM templates a master makes at start-up ("Check / create templates"): a handful
of XenServer's, as data, and the VM record of each.

Facts from xenserver/guest-templates-json (the templates of XenServer 8: json/*.json and
guesttemplates/blank_template.py) and xen-api create_templates.ml: each template's uuid and
name_label; memory from its min_memory m: memory_static_min = m, dynamic_min = dynamic_max =
static_max (and the target) = 2m; 1 vCPU (Windows: 2); actions destroy / restart / restart;
platform acpi 1, apic, pae, hpet, nx plus each base's own keys; HVM boot policy "BIOS order" with
the base's boot params; other_config install-methods, linux_template for Linux, "disks" (the
provisioning XML: one system disk of the template's size) and default_template=true, the key by
which xapi's find_or_create_template recognises its own templates; the "recommendations" XML of
restrictions (memory-static-max, vcpus-max, number of VBDs and VIFs). Fields the simulated
hypervisor has no use for (vendor device, generation id, mac_seed) are left out.
"""

from dataclasses import dataclass

MIB = 1024 * 1024
GIB = 1024 * MIB

DEFAULT_TEMPLATE_KEY = "default_template"
INSTALL_METHODS_KEY = "install-methods"
LINUX_TEMPLATE_KEY = "linux_template"
DISKS_KEY = "disks"

BASE_PLATFORM = {"acpi": "1", "apic": "true", "pae": "true", "hpet": "true", "nx": "true"}
LINUX_UEFI_PLATFORM = {"vga": "std", "videoram": "8", "viridian": "false", "device_id": "0001",
                       "secureboot": "auto"}
WINDOWS_PLATFORM = {"cores-per-socket": "2", "device_id": "0002", "viridian": "true",
                    "viridian_time_ref_count": "true", "viridian_reference_tsc": "true",
                    "viridian_hcall_remote_tlb_flush": "true", "viridian_apic_assist": "true",
                    "viridian_crash_ctl": "true", "viridian_stimer": "true",
                    "acpi_laptop_slate": "1", "secureboot": "true"}
LINUX_INSTALL_METHODS = "cdrom,nfs,http,ftp"


@dataclass(frozen=True)
class Template:
    """One built-in template: what tells it from the others."""
    uuid: str
    name_label: str
    name_description: str
    min_memory_bytes: int
    max_memory_bytes: int
    vcpus: int
    disk_bytes: int | None          # the provisioned system disk, None: no disk
    disk_bootable: bool
    platform: dict
    boot_params: dict
    install_methods: str
    linux: bool
    user_version: int = 1
    vcpus_max: int = 32


LINUX_DESCRIPTION = ("To use this template from the CLI, install your VM using vm-install, then "
                     "set other-config-install-repository to the path to your network "
                     "repository, e.g. http://<server>/<path> or nfs:server:/<path>")


def _linux_uefi(uuid, name, min_memory_bytes, disk_bytes):
    return Template(uuid=uuid, name_label=name, name_description=LINUX_DESCRIPTION,
                    min_memory_bytes=min_memory_bytes, max_memory_bytes=1536 * GIB, vcpus=1,
                    disk_bytes=disk_bytes, disk_bootable=True, platform=LINUX_UEFI_PLATFORM,
                    boot_params={"firmware": "uefi", "order": "cdn"},
                    install_methods=LINUX_INSTALL_METHODS, linux=True)


TEMPLATES = (
    Template(uuid="552bce37-51b2-445d-84f2-5f33fa112d7e", name_label="Other install media",
             name_description="Template which allows VM installation from install media",
             min_memory_bytes=128 * MIB, max_memory_bytes=128 * GIB, vcpus=1, disk_bytes=None,
             disk_bootable=False, platform={"viridian": "true"}, boot_params={"order": "dc"},
             install_methods="cdrom", linux=False, user_version=2),
    _linux_uefi("07d91aaa-43f7-430a-bf84-0edb6714df0f", "Debian Bookworm 12", 1 * GIB,
                10 * GIB),
    _linux_uefi("df1a0e64-3799-482b-aa9f-1ed713c7dac5", "Ubuntu Jammy Jellyfish 22.04", 1 * GIB,
                10 * GIB),
    _linux_uefi("1a647cf9-99c1-4e9c-b3b4-6b9989c530be", "Rocky Linux 9", 2 * GIB, 15 * GIB),
    Template(uuid="7774689b-4ca1-4dea-8545-dddd6b64c17f", name_label="Windows 10 (64-bit)",
             name_description="Clones of this template will automatically provision their "
             "storage when first booted and then reconfigure themselves with the optimal "
             "settings for Windows 10 (64-bit).",
             min_memory_bytes=2 * GIB, max_memory_bytes=1536 * GIB, vcpus=2,
             disk_bytes=24 * GIB, disk_bootable=False, platform=WINDOWS_PLATFORM,
             boot_params={"firmware": "uefi", "order": "cd"}, install_methods="cdrom",
             linux=False),
)


def disks_xml(template):
    """The provisioning XML of other_config "disks" (one system disk on the default SR)."""
    if template.disk_bytes is None:
        return None
    bootable = "true" if template.disk_bootable else "false"
    return (f'<provision><disk device="0" size="{template.disk_bytes}" sr="" '
            f'bootable="{bootable}" type="system"/></provision>')


def recommendations_xml(template):
    return ("<restrictions>"
            f'<restriction field="memory-static-max" max="{template.max_memory_bytes}"/>'
            f'<restriction field="vcpus-max" max="{template.vcpus_max}"/>'
            '<restriction property="number-of-vbds" max="255"/>'
            '<restriction property="number-of-vifs" max="7"/>'
            "</restrictions>")


def vm_record(template):
    """The VM fields of ``template`` (a Halted template, not a control domain)."""
    other_config = {DEFAULT_TEMPLATE_KEY: "true", INSTALL_METHODS_KEY: template.install_methods}
    if template.linux:
        other_config[LINUX_TEMPLATE_KEY] = "true"
    disks = disks_xml(template)
    if disks:
        other_config[DISKS_KEY] = disks
    high = 2 * template.min_memory_bytes
    return {
        "uuid": template.uuid, "name_label": template.name_label,
        "name_description": template.name_description, "user_version": template.user_version,
        "is_a_template": True, "is_default_template": True, "power_state": "Halted",
        "memory_static_min": template.min_memory_bytes, "memory_dynamic_min": high,
        "memory_dynamic_max": high, "memory_static_max": high, "memory_target": high,
        "VCPUs_max": template.vcpus, "VCPUs_at_startup": template.vcpus,
        "actions_after_shutdown": "destroy", "actions_after_reboot": "restart",
        "actions_after_crash": "restart",
        "PV_bootloader": "", "HVM_boot_policy": "BIOS order",
        "HVM_boot_params": dict(template.boot_params),
        "platform": {**BASE_PLATFORM, **template.platform},
        "other_config": other_config,
        "recommendations": recommendations_xml(template),
    }
