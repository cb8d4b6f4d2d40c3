"""Both realisations of the model repository against Triton's own ModelConfig protobuf (shipped in
tritonclient), their contracts, and the ensembles' tensor maps against their step models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from oncostream.model_build import (ENSEMBLES, MANIFEST_NAME, STEPS, ModelBuildError, build_repository,
                                    ensemble_problems, model_names, parse_config, tensorrt_profile)
from oncostream.model_contract import MODEL_NAMES, WEIGHTS_PARAMETER, ModelContract, TensorSpec, load_contract
from oncostream.settings import Settings

TARGETS = ("cpu", "tensorrt")
SOURCE = Settings().model_repository
DTYPE = {"FP32": "TYPE_FP32", "FP16": "TYPE_FP16", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32",
         "INT64": "TYPE_INT64", "UINT8": "TYPE_UINT8", "BOOL": "TYPE_BOOL"}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for target in TARGETS:
        out[target] = tmp_path_factory.mktemp(target)
        build_repository(target, out[target], SOURCE)
    return out


def _configs(repository: Path) -> dict[str, model_config_pb2.ModelConfig]:
    return {name: parse_config((repository / name / "config.pbtxt").read_text()) for name in model_names()}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", model_names())
def test_config_parses_into_triton_model_config(built, target, name):
    text = (built[target] / name / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.name == name
    assert config.backend or config.platform


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", model_names())
def test_config_follows_the_contract(built, target, name):
    contract = load_contract(name, SOURCE)
    config = _configs(built[target])[name]
    assert config.max_batch_size == contract.max_batch_size
    for specs, tensors in ((contract.inputs, config.input), (contract.outputs, config.output)):
        assert [t.name for t in tensors] == [s.name for s in specs]
        for spec, tensor in zip(specs, tensors):
            assert model_config_pb2.DataType.Name(tensor.data_type) == DTYPE[spec.dtype]
            assert list(tensor.dims) == (spec.shape[1:] if contract.max_batch_size else spec.shape)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("ensemble", ENSEMBLES)
def test_ensemble_tensor_maps_fit_the_step_models(built, target, ensemble):
    configs = _configs(built[target])
    assert configs[ensemble].platform == "ensemble"
    assert ensemble_problems(configs[ensemble], configs) == []


@pytest.mark.parametrize("ensemble", ENSEMBLES)
def test_ensembles_are_identical_on_both_targets(built, ensemble):
    cpu, gpu = ((built[t] / ensemble / "config.pbtxt").read_text() for t in TARGETS)
    assert cpu == gpu


def test_cpu_realisation_is_python_on_cpu_instances(built):
    repository = built["cpu"]
    for name, config in _configs(repository).items():
        if name in ENSEMBLES:
            continue
        assert config.backend == "python", name
        assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU], name
        entry = (repository / name / "1" / "model.py").read_text()
        assert "TritonPythonModel" in entry
    for name in MODEL_NAMES:
        assert (repository / name / "1" / "model.onnx").stat().st_size > 0
        assert "oncostream.triton_models.networks import OnnxNetwork" in (repository / name / "1" / "model.py").read_text()


def test_tensorrt_realisation(built):
    repository = built["tensorrt"]
    configs = _configs(repository)
    manifest = json.loads((repository / MANIFEST_NAME).read_text())
    gpu = model_config_pb2.ModelInstanceGroup.KIND_GPU
    for name in MODEL_NAMES:
        config, contract = configs[name], load_contract(name, SOURCE)
        assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
        assert [g.kind for g in config.instance_group] == [gpu]
        assert config.HasField("dynamic_batching") == (contract.max_batch_size > 1)
        assert (repository / name / "1" / "model.onnx").exists()
        entry = manifest["networks"][name]
        assert entry["precision"] == "fp16" and entry["plan"] == f"{name}/1/model.plan"
        assert set(entry["profile"]) == {s.name for s in contract.inputs}
        for spec in contract.inputs:
            shapes = entry["profile"][spec.name]
            assert len(shapes["min"]) == len(spec.shape)
            for low, opt, high, declared in zip(shapes["min"], shapes["opt"], shapes["max"], spec.shape):
                assert 1 <= low <= opt <= high
                assert declared == -1 or low == opt == high == declared
            if contract.max_batch_size:
                assert shapes["max"][0] == contract.max_batch_size
    preprocess = configs["mammo_preprocess"]
    assert preprocess.backend == "dali" and [g.kind for g in preprocess.instance_group] == [gpu]
    assert [list(t.dims) for t in preprocess.input] == [[-1, -1], [8], [512, 416]]  # image, frame, mask
    assert manifest["dali"]["mammo_preprocess"]["pipeline"] == STEPS["mammo_preprocess"].dali_pipeline
    for name in STEPS:
        if name != "mammo_preprocess":
            assert configs[name].backend == "python"


def _mutate(configs, ensemble, how):
    broken = model_config_pb2.ModelConfig()
    broken.CopyFrom(configs[ensemble])
    step = broken.ensemble_scheduling.step[1]
    if how == "unknown-model":
        step.model_name = "no_such_model"
    elif how == "unknown-input":
        key = next(iter(step.input_map))
        step.input_map["not_an_input"] = step.input_map.pop(key)
    elif how == "unproduced-tensor":
        key = next(iter(step.input_map))
        step.input_map[key] = "nobody_writes_this"
    elif how == "wrong-dtype":
        broken.input[0].data_type = model_config_pb2.TYPE_INT16
    elif how == "wrong-rank":
        broken.input[0].dims.append(-1)
    elif how == "output-not-produced":
        broken.output.add(name="extra", data_type=model_config_pb2.TYPE_FP32, dims=[-1])
    return broken


@pytest.mark.parametrize("how", ["unknown-model", "unknown-input", "unproduced-tensor", "wrong-dtype",
                                 "wrong-rank", "output-not-produced"])
@pytest.mark.parametrize("ensemble", ENSEMBLES)
def test_broken_ensemble_maps_are_reported(built, ensemble, how):
    configs = _configs(built["cpu"])
    assert ensemble_problems(_mutate(configs, ensemble, how), configs) != []


def test_unknown_config_fields_do_not_parse():
    with pytest.raises(text_format.ParseError):
        parse_config('name: "x" backend: "python" max_batch_sizes: 4')


def test_dynamic_dim_without_a_tensorrt_range_is_refused():
    contract = ModelContract(name="unknown_net", version="1", task="t", preprocessing="p", max_batch_size=4,
                             inputs=[TensorSpec(name="x", dtype="FP32", shape=[-1, 1, -1])],
                             outputs=[TensorSpec(name="y", dtype="FP32", shape=[-1, 1])])
    with pytest.raises(ModelBuildError, match="no range"):
        tensorrt_profile(contract)


def test_unknown_target_is_refused(tmp_path):
    with pytest.raises(ModelBuildError, match="unknown target"):
        build_repository("onnxruntime", tmp_path, SOURCE)


@pytest.mark.parametrize("target", TARGETS)
def test_models_build_command_writes_a_repository(tmp_path, target):
    from oncostream.cli import main

    assert main(["models", "build", "--target", target, "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted(model_names())
    assert (tmp_path / MANIFEST_NAME).exists() == (target == "tensorrt")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_network_config_names_its_weights(built, target, name):
    config = _configs(built[target])[name]
    assert config.parameters[WEIGHTS_PARAMETER].string_value == load_contract(name, SOURCE).weights_sha256
