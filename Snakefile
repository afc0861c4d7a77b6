# D2F Bench: the reproduction DAG. Profiles: workflow/config/{tiny,ci}.yaml (tiny is the default).
from snakemake.utils import min_version, validate

from d2f_core.config import check_yaml
from d2f_core.slurm import guard as guard_slurm

min_version("9.0")


# The tiny profile is the default; `--configfile` replaces it (rather than being merged into it).
if not workflow.overwrite_configfiles:
    check_yaml("workflow/config/tiny.yaml")

    configfile: "workflow/config/tiny.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


# On a Slurm cluster: the status command tried before any job is submitted, failed status queries bounded, no
# account guessed (d2f_core/slurm.py).
onstart:
    guard_slurm(workflow)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/decode.smk"
include: "workflow/rules/speed.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),
