"""The local action of the start-up step "Check / create templates" (master): the built-in
templates of common/platform/templates.py as VM rows.

xapi create_templates.ml find_or_create_template: a built-in template is there when a VM with its
name_label is a template with other_config default_template=true; else it is created. One that is
there is left as it is (the operator may have edited it). We also know a template by its uuid
(XenServer's templates have fixed ones), so one the operator renamed is not made twice.
"""

from common.platform import templates
from daemons.init.dbsync_client import DbClient


def _present(db, template, by_name):
    """Whether ``template`` is already a row: by uuid, else a default template of that name."""
    ref = db.get_by_uuid_or_none("VM", template.uuid)
    if ref is not None:
        return True
    return any(record["other_config"].get(templates.DEFAULT_TEMPLATE_KEY) == "true"
               for record in by_name.get(template.name_label, ()))


def create_templates(ctx, runner):
    """Create the built-in templates that are missing; leave the others as they are."""
    db = DbClient.connect(ctx)
    try:
        by_name = {}
        for record in db.records("VM", is_a_template=True).values():
            by_name.setdefault(record["name_label"], []).append(record)
        created = []
        for template in templates.TEMPLATES:
            if _present(db, template, by_name):
                continue
            ref = db.create("VM", templates.vm_record(template))
            ctx.log.info("template %r created (%s)", template.name_label, ref)
            created.append(template.name_label)
    finally:
        db.close()
    total = len(templates.TEMPLATES)
    return (f"{total} built-in templates: {len(created)} created"
            + (f" ({', '.join(created)})" if created else "")
            + f", {total - len(created)} already there, left as they are")
