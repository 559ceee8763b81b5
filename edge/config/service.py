"""Config for what runs around the line: the audit log, metrics/health and the operator page."""
from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator

from edge.config.base import Float, Int, Section, Str


class AuditConfig(Section):
    db: Str = Field("", description="default <run_dir>/audit.db")
    captures_dir: Str = Field("", description="default <run_dir>/captures")
    captures_quota_mb: Float = Field(500.0, ge=0)
    reserve_free_mb: Float = Field(200.0, ge=0, description="captures pause while the disk has less free space "
                                                            "than this: the decision log keeps its room")
    sample_rate: Float = Field(0.02, ge=0, le=1, description="share of confident items also saved, for spot checks")
    max_db_mb: Float = Field(200.0, gt=0)
    max_age_days: Float = Field(90.0, gt=0)


class _Listener(Section):
    bind: Str = Field("127.0.0.1", description="loopback by default: expose deliberately")

    @field_validator("bind")
    @classmethod
    def _address(cls, bind: str) -> str:
        try:
            ipaddress.ip_address(bind)
        except ValueError:
            raise ValueError(f"must be an IP address such as 127.0.0.1 or 0.0.0.0, got {bind!r}") from None
        return bind


class ObservabilityConfig(_Listener):
    port: Int = Field(9108, ge=0, le=65535, description="0 disables the HTTP endpoint")


class WebConfig(_Listener):
    port: Int = Field(8080, ge=0, le=65535, description="0 disables the operator page")
    token_file: Str = Field("", description="file holding the token every control action must carry")
    review_dir: Str = Field("", description="relabelled captures go to <review_dir>/<class>/ "
                                            "(default <run_dir>/review)")
    preview_fps: Float = Field(5.0, gt=0, le=30, description="the live view drops frames, sorting never waits for it")
    batch_root: Str = Field("", description="batch tests may read server folders inside this one only "
                                            "('' : uploaded zips only)")
    batch_max_mb: Int = Field(200, ge=1, le=4096, description="largest zip a batch test accepts")


class ModelsConfig(Section):
    """Swapping the running model (SIGHUP, the operator page) and running a candidate in shadow."""
    dir: Str = Field("", description="swap requests from the page may load model files inside this folder only "
                                     "(default <run_dir>)")
    canary: Str = Field("", description="class-folder tree of images a new model must pass before it sorts "
                                        "(default: the run's frozen test set, else its test split)")
    canary_images: Int = Field(60, ge=0, le=5000, description="at most this many canary images (a seeded sample); "
                                                              "0 skips the canary")
    min_agreement: Float = Field(0.85, ge=0, le=1, description="share of canary images on which the new model "
                                                               "must answer as the running one")
    min_accuracy: Float = Field(0.0, ge=0, le=1, description="the new model's accuracy on the canary labels")
    shadow: Str = Field("", description="a candidate model run on the same crops as the live one, off the hot path")
    shadow_queue: Int = Field(4, ge=1, le=64, description="crops waiting for the shadow model; more are dropped "
                                                          "(counted): it never delays the line")
