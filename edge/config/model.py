"""Config for the model's life on the workstation and the device: data, model,
preprocessing, training, export, calibration, TensorRT engine, and the runtime that loads it."""
from __future__ import annotations

from typing import Annotated, Dict, Literal, Optional, Tuple, Union

from pydantic import BeforeValidator, Field, model_validator

from edge.config.base import Bool, Float, Int, Invalid, Section, Str

Backbone = Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18"]
# "auto" picks the backbone's own normalisation (edge.vision.preprocess.NORMALISATIONS).
Normalisation = Literal["auto", "tf_lite", "imagenet"]
Spinning = Literal["off", "during_run", "always"]
CalibrationMethod = Literal["entropy", "percentile", "max"]
ProviderName = Literal["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


class DataConfig(Section):
    root: Str = "../shared/datasets/trashnet"
    val_fraction: Float = Field(0.1, gt=0, lt=1)
    test_fraction: Float = Field(0.1, gt=0, lt=1)
    seed: Int = 42
    frozen_test: Optional[Str] = Field(None, description="the frozen test set (`prepare --freeze-test` writes it); "
                                       "default <run_dir>/frozen_test.json. Its images are the test split "
                                       "whatever is added, so models are compared on the same images")

    @model_validator(mode="after")
    def _fractions(self):
        if self.val_fraction + self.test_fraction >= 1:
            raise Invalid("val_fraction", "and data.test_fraction must sum below 1 (the rest is the train split)")
        return self


class ModelConfig(Section):
    backbone: Backbone = "efficientnet_lite0"
    # "imagenet": the offline ImageNet weights for the backbone; "none": from scratch;
    # anything else: path to a state_dict file.
    weights: Str = "imagenet"
    input_size: Int = Field(224, ge=32, le=1024)
    freeze_stages: Int = Field(3, ge=0, description="leading stages kept frozen while fine-tuning (0 trains all)")
    dropout: Float = Field(0.2, ge=0, lt=1)


class PreprocessConfig(Section):
    normalisation: Normalisation = "auto"


class AugmentConfig(Section):
    hflip: Float = Field(0.5, ge=0, le=1)
    vflip: Float = Field(0.0, ge=0, le=1, description="> 0 where items lie in any orientation (top-down camera)")
    rotation_deg: Float = Field(15.0, ge=0, le=180)
    translate: Float = Field(0.1, ge=0, lt=1)
    scale: Float = Field(0.0, ge=0, lt=1, description="+-fraction: items of one class come in several sizes")
    color_jitter: Float = Field(0.2, ge=0, le=1)
    policy: Literal["none", "trivial", "randaugment"] = Field(
        "none", description="an automatic policy after the above: trivial (TrivialAugmentWide: one random "
                            "operation at a random strength) | randaugment (two operations at strength 9)")


class MixConfig(Section):
    """Train on blends of two images with the blended label: mixup (the whole images, weighted)
    or cutmix (a box of one pasted into the other, weighted by its area), one of them per batch."""
    mixup_alpha: Float = Field(0.0, ge=0, description="Beta(alpha, alpha) for the weight; 0: no mixup")
    cutmix_alpha: Float = Field(0.0, ge=0, description="Beta(alpha, alpha) for the kept area; 0: no cutmix")
    prob: Float = Field(1.0, ge=0, le=1, description="share of training batches that are mixed")


class DistillConfig(Section):
    """Knowledge distillation: the student also learns a trained teacher's softened answers."""
    teacher: Str = Field("", description="a run dir or checkpoint of a trained model (e.g. a Lite2) with the same "
                                         "classes and normalisation; empty: off")
    weight: Float = Field(0.5, ge=0, le=1, description="share of the loss from the teacher's answers")
    temperature: Float = Field(2.0, gt=0)


class LowResConfig(Section):
    """Train the first epochs on smaller images, the rest at model.input_size (the size the line
    runs): a step costs about the pixel count, and the full-size epochs re-fit the BatchNorm
    statistics and the filters to the deployed scale."""
    size: Int = Field(0, ge=0, description="pixels (a multiple of 32, below model.input_size); 0: off")
    epochs: Int = Field(0, ge=0, description="how many of train.epochs run at that size")
    progressive: bool = Field(False, description="grow from size towards model.input_size in steps of 32, in equal "
                                                 "runs of those epochs (progressive resizing): each step changes "
                                                 "the scale the filters learn less than one jump to the full size")

    def size_at(self, epoch: int, input_size: int) -> Optional[int]:
        """The side an epoch (1-based) trains at; None: model.input_size."""
        if not self.size or epoch > self.epochs:
            return None
        if not self.progressive:
            return self.size
        steps = range(self.size, input_size, 32)  # the sizes below the full one
        return steps[(epoch - 1) * len(steps) // self.epochs]

    @model_validator(mode="after")
    def _multiple_of_32(self):
        if self.size % 32:
            raise Invalid("size", f"{self.size} must be a multiple of 32 (the backbone's padding is fixed for "
                                  f"sizes that halve evenly to its last stage), e.g. {self.size // 32 * 32 or 32}")
        return self


class TrainConfig(Section):
    epochs: Int = Field(15, ge=1)
    batch_size: Int = Field(32, ge=1)
    lr: Float = Field(1e-3, gt=0, le=1)
    backbone_lr_scale: Float = Field(1.0, gt=0, le=1, description="< 1: the pretrained backbone learns slower")
    layer_decay: Float = Field(1.0, gt=0, le=1, description="< 1: layer-wise rate decay: each backbone stage "
                                                            "learns this factor slower than the one above it")
    weight_decay: Float = Field(1e-4, ge=0)
    schedule: Literal["plateau", "cosine"] = Field(
        "plateau", description="plateau: halve the rate when validation stalls (reads the validation split); "
                               "cosine: a fixed decay over train.epochs after warmup_epochs (needs no validation: "
                               "cross-validation and a final fit on all non-test images use it)")
    warmup_epochs: Int = Field(0, ge=0, description="cosine: epochs of linear warm-up from a small rate")
    plateau_patience: Int = Field(3, ge=0)
    plateau_factor: Float = Field(0.5, gt=0, lt=1)
    early_stop_patience: Int = Field(5, ge=1)
    class_weights: Bool = True
    label_smoothing: Float = Field(0.0, ge=0, lt=1)
    ema_decay: Float = Field(0.0, ge=0, lt=1, description="> 0: validate and keep a moving average of the weights "
                                                          "(0 turns the average off)")
    workers: Int = Field(2, ge=0)
    seed: Int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cache_images: Bool = True
    channels_last: Bool = Field(True, description="NHWC memory layout for the model and its batches: the same "
                                                  "arithmetic, 1.5x faster training steps on a 2-core AVX2 CPU "
                                                  "(`scrapsort train --benchmark` measures it)")
    augment: AugmentConfig = AugmentConfig()
    low_res: LowResConfig = LowResConfig()
    mix: MixConfig = MixConfig()
    distill: DistillConfig = DistillConfig()


class ExportConfig(Section):
    opset: Int = Field(17, ge=13)
    dynamic_batch: Bool = False
    parity_images: Int = Field(16, ge=1)
    parity_tolerance: Float = Field(1e-4, gt=0)


class QatConfig(Section):
    """Quantization-aware fine-tuning (calibration/qat.py): simulated INT8, learning FP32's
    answers on the calibration images and a share of the selection images."""
    # always: a model's own training images flatter post-training INT8 (99.1 % agreement there,
    # 94.6 % on new images for a cross-validation fold's model; fine-tuned 97.9 %: docs/int8.md).
    when: Literal["always", "needed"] = Field("always", description="needed: only where no post-training "
                                                                    "variant meets the bounds")
    epochs: Int = Field(3, ge=0, description="passes over the images it learns from; 0: never")
    learn_share: Float = Field(0.5, ge=0, lt=1, description=(
        "share of the selection images (non-test, not calibration) it also learns from, set aside "
        "before any variant is scored; the rest judge every variant"))
    lr: Float = Field(1e-5, gt=0, le=1)
    batch_size: Int = Field(32, ge=1)
    percentile: Float = Field(99.99, gt=90, le=100, description="of |input| per layer: the simulated INT8 range")


class CalibrationConfig(Section):
    images: Int = Field(300, ge=1, description="from the train split, stratified; never test images")
    # Tried in turn on every non-test image calibration did not use; the variant that agrees best
    # with FP32 (then the more accurate) is kept.
    methods: Tuple[CalibrationMethod, ...] = Field(("entropy", "percentile", "max"), min_length=1)
    percentile: Float = Field(99.999, gt=90, lt=100)
    min_agreement: Float = Field(0.99, ge=0, le=1, description="INT8 must give FP32's answer on this share of the "
                                                               "selection images ...")
    max_drop: Float = Field(0.003, ge=-1, le=1, description="... and lose at most this much accuracy there "
                                                          "(< 0 always runs the layer scan) ...")
    max_float_layers: Int = Field(4, ge=0, description="... else up to this many most sensitive layers stay float")
    # INT8 shifts each layer's mean output; on new images of a fold, every-layer INT8 of two Lite0
    # models kept 93.8-95.1 % of FP32's answers, and 97.2-99.5 % with their biases corrected
    # (docs/int8.md).
    bias_correction: Bool = Field(True, description="also quantize the model with its biases corrected for the "
                                                    "weights' INT8 rounding, then for each layer's measured "
                                                    "shift (calibration/bias_correction.py)")
    bias_correction_images: Int = Field(128, ge=1, description=(
        "calibration images the measured step runs on, spread over the set; each holds about 30 MB "
        "for Lite0 at 224 px while it runs"))
    qat: QatConfig = QatConfig()
    sensitivity_images: Int = Field(64, ge=1)
    seed: Int = 42
    trt_cache_version: Str = Field("8.5.2", description="TensorRT version in the legacy calibration cache header")


class EngineConfig(Section):
    workspace_mib: Int = Field(1024, ge=16)
    timing_cache: Str = Field("", description="default: <run_dir>/timing.cache, reused across builds")
    dla_core: Int = Field(-1, ge=-1, description=">= 0 builds for that DLA core (Xavier/Orin), GPU fallback on")
    max_batch: Int = Field(1, ge=1, description="> 1 adds an optimisation profile (needs a dynamic-batch ONNX)")
    # qdq: the Q/DQ ONNX (every TensorRT); calibration_cache: implicit INT8 from the legacy cache (8.x/10.x only).
    int8_mode: Literal["qdq", "calibration_cache"] = "qdq"


class ProviderConfig(Section):
    name: ProviderName
    options: Dict[Str, Union[Bool, Int, Float, Str]] = Field(
        {}, description="ONNX Runtime provider options, e.g. trt_engine_cache_path, device_id, trt_dla_enable")


def _spinning_entry(value):
    return {True: "always", False: "off"}.get(value, value) if isinstance(value, bool) else value


def _provider_entry(entry):
    return {"name": entry} if isinstance(entry, str) else entry


class RuntimeConfig(Section):
    model: Str = Field("", description=".onnx or .engine; default <run_dir>/model.onnx")
    # Tried in order: the first that this onnxruntime has and that loads runs the model, the later ones
    # take the nodes it cannot (TensorRT EP -> CUDA EP -> CPU). A name alone, or {name, options}.
    providers: Tuple[Annotated[ProviderConfig, BeforeValidator(_provider_entry)], ...] = Field(
        (ProviderConfig(name="CPUExecutionProvider"),))
    threads: Int = Field(0, ge=0, description="ONNX Runtime intra-op threads; 0: one per core")
    spinning: Annotated[Spinning, BeforeValidator(_spinning_entry)] = Field(
        "during_run", description="how ONNX Runtime's threads wait for work: off (sleep), during_run (busy-wait inside "
                           "a run, sleep between runs) or always (also for a while after each run, taking the "
                           "CPU from the camera thread); true/false mean always/off")
    flip_average: Bool = Field(False, description="classify each item as seen and mirrored, and average the two "
                                                 "answers: a second inference per item (`scrapsort bench` measures "
                                                 "its accuracy and latency)")
    allow_root: Bool = Field(False, description="the daemon refuses root unless this is set deliberately")

    @model_validator(mode="after")
    def _some_provider(self):
        if not self.providers:
            raise Invalid("providers", "must name at least one provider (CPUExecutionProvider runs everywhere)")
        return self
