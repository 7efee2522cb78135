"""DA-Fusion's per-class textual inversion (`dalda textual-inversion`, `train_class_tokens`) on the offline kit: the
defaults and the optimiser are `fine_tune.py`'s, a step is `fine_tune.py`'s step, the loss falls, only the new token's
row learns, the files load with diffusers and change its images, a killed run resumes without training a finished
class again, and a changed setting is refused."""

import copy
import json
import shutil
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file

from dataset_builders.arguments import SourceArguments
from dataset_builders.source import load_real_images, select_few_shot
from dataset_builders.textual_inversion import (
    ALL_TOKENS_FILE,
    RECORD_FILE,
    class_shots,
    token_path,
    train_class_tokens,
    train_dataset_tokens,
)
from pipeline_dalda.images import load_image
from pipeline_dalda.textual_inversion import (
    IMAGENET_TEMPLATES_SMALL,
    TextualInversionTrainer,
    class_seed,
    class_token,
    load_class_tokens,
)
from pipeline_dalda.textual_inversion_arguments import (
    TextualInversionArguments,
    TextualInversionModelArguments,
    TextualInversionRunArguments,
)

from .helpers import (
    PETS_CLASSES,
    dalda_command,
    kill_midway,
    load_ip_adapter,
    random_images,
    run_dalda,
    run_in_two_processes,
)


SHORT_CONTEXT = 48
"""Tokens the test kit's tokenizer pads a prompt to. The kit's byte-level tokenizer pads to 256 (a token per byte),
which makes the text encoder most of a training step's time on the CPU; every template with a token fits in 48."""

STEPS = 6
"""Training steps per class of the runs through the command (enough that a run can be killed between classes)."""


ONE_THREAD = {"OMP_NUM_THREADS": "1"}
"""The environment of the commands these tests run: one torch thread each (see [`one_thread`])."""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tests train in one torch thread: on a machine whose cores other jobs share, two threads spinning for
    each other made a training step of the kit about 4× slower than one thread (1.0 s against 0.25 s, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kit_args(**overrides) -> TextualInversionArguments:
    """DA-Fusion's settings at the kit's size: 64 px, and 'a' as the initializer (the kit's tokenizer spends one token
    per byte, so 'the' is three)."""
    return TextualInversionArguments(
        **{"resolution": 64, "max_train_steps": 4, "initializer_token": "a", **overrides}
    )


@pytest.fixture(scope="module")
def kit(tiny_models, tmp_path_factory) -> Path:
    """The kit's Stable Diffusion, saved again with its tokenizer padding to [`SHORT_CONTEXT`] tokens."""
    pipe = StableDiffusionPipeline.from_pretrained(tiny_models.stable_diffusion)
    pipe.tokenizer.model_max_length = SHORT_CONTEXT
    folder = tmp_path_factory.mktemp("short-context") / "stable-diffusion"
    pipe.save_pretrained(folder)
    return folder


def load_pipe(kit: Path) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(kit)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def command_options(kit: Path, pets: Path, output_dir: Path, **overrides) -> dict:
    return {
        "pretrained_model_name_or_path": str(kit), "device": "cpu", "dataset": str(pets / "dataset"),
        "num_shots": 2, "output_dir": str(output_dir), "resolution": 64, "max_train_steps": STEPS,
        "initializer_token": "a", **overrides,
    }


def run_in_process(options: dict) -> dict[str, str]:
    """`dalda textual-inversion` with `options`, called in this process."""
    names = {
        dataclass: {field for field in dataclass.__dataclass_fields__ if dataclass.__dataclass_fields__[field].init}
        for dataclass in (TextualInversionModelArguments, SourceArguments, TextualInversionRunArguments,
                          TextualInversionArguments)
    }
    parts = [dataclass(**{key: value for key, value in options.items() if key in fields})
             for dataclass, fields in names.items()]
    return train_dataset_tokens(*parts)


@pytest.fixture(scope="module")
def trained(kit, pets, tmp_path_factory) -> Path:
    """One uninterrupted `dalda textual-inversion` run on `pets` (3 classes × 2 shots)."""
    output = tmp_path_factory.mktemp("trained") / "tokens"
    run_in_process(command_options(kit, pets, output))
    return output


def file_stamps(folder: Path) -> dict[Path, tuple[int, int, bytes]]:
    return {path: (path.stat().st_ino, path.stat().st_mtime_ns, path.read_bytes()) for path in folder.glob("*")}


@pytest.fixture
def built_optimizers(monkeypatch) -> list[torch.optim.AdamW]:
    """Every `torch.optim.AdamW` built during the test, each with `initial`: its parameters as they were when it was
    built (the state a training starts from)."""
    built = []

    class RecordedAdamW(torch.optim.AdamW):
        def __init__(self, params, **kwargs):
            params = list(params)
            super().__init__(params, **kwargs)
            self.initial = [parameter.detach().clone() for parameter in params]
            built.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", RecordedAdamW)
    return built


def noise_shots() -> list[PIL.Image.Image]:
    """Two shots of uniform noise, of other sizes than the training square: a flip and the resize both matter."""
    return [image.resize(size) for image, size in zip(random_images(2, seed=11), [(40, 30), (30, 50)])]


def test_the_defaults_are_fine_tune_pys_settings_and_build_its_optimizer(kit, built_optimizers):
    defaults = TextualInversionArguments()
    # DA-Fusion's `scripts/fine_tuning/*.sh`: --resolution=512 --train_batch_size=4 --gradient_accumulation_steps=1
    # --max_train_steps=1000 --learning_rate=5.0e-04 --scale_lr --lr_scheduler="constant" --lr_warmup_steps=0;
    # `fine_tune.py` sets `initializer_token = "the"` per class and keeps its own defaults for the rest: AdamW
    # β = (0.9, 0.999), weight decay 1e-2, ε 1e-8, `--repeats` 100, no `--center_crop`.
    assert (defaults.resolution, defaults.train_batch_size, defaults.max_train_steps) == (512, 4, 1000)
    assert (defaults.learning_rate, defaults.scale_lr, defaults.gradient_accumulation_steps) == (5e-4, True, 1)
    assert defaults.step_learning_rate() == pytest.approx(2e-3, rel=1e-12)  # 5e-4 · 4 · 1
    assert replace(defaults, gradient_accumulation_steps=3).step_learning_rate() == pytest.approx(6e-3, rel=1e-12)
    assert replace(defaults, scale_lr=False).step_learning_rate() == 5e-4
    assert defaults.initializer_token == "the"
    assert (defaults.adam_beta1, defaults.adam_beta2, defaults.adam_weight_decay, defaults.adam_epsilon) == (
        0.9, 0.999, 1e-2, 1e-8)
    assert (defaults.repeats, defaults.center_crop) == (100, False)

    # The optimiser a training builds from the defaults (at the kit's size, with its one-token initializer).
    pipe = load_pipe(kit)
    batch_sizes = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, inputs: batch_sizes.append(len(inputs[0])))
    trainer = TextualInversionTrainer(pipe, replace(defaults, resolution=64, max_train_steps=2, initializer_token="a"))
    trainer.train("<pug>", noise_shots(), seed=2, show_progress=False)
    hook.remove()
    (optimizer,) = built_optimizers
    (group,) = optimizer.param_groups
    assert (group["lr"], group["betas"], group["weight_decay"], group["eps"]) == (
        pytest.approx(2e-3, rel=1e-12), (0.9, 0.999), 1e-2, 1e-8)  # lr still 2e-3 after two steps: constant
    (parameter,) = group["params"]  # the whole input-embedding matrix, as `fine_tune.py`
    assert parameter is trainer.text_encoder.get_input_embeddings().weight
    assert batch_sizes == [4, 4]  # one UNet call of `train_batch_size` images per step


def test_the_new_tokens_row_starts_as_the_initializers_embedding(kit, built_optimizers):
    pipe = load_pipe(kit)
    rows = pipe.text_encoder.get_input_embeddings().weight.detach()
    for word in ("a", "b"):
        trainer = TextualInversionTrainer(pipe, kit_args(max_train_steps=1, initializer_token=word))
        trainer.train("<pug>", noise_shots(), seed=2, show_progress=False)
        (initial,) = built_optimizers.pop().initial  # the embedding matrix at step 0
        token_id = trainer.tokenizer.convert_tokens_to_ids("<pug>")
        (word_id,) = pipe.tokenizer.encode(word, add_special_tokens=False)
        assert torch.equal(initial[token_id], rows[word_id]), word
        assert torch.equal(initial[:token_id], rows)  # every other row: the pipeline's
    assert not torch.equal(rows[pipe.tokenizer.encode("a", add_special_tokens=False)[0]],
                           rows[pipe.tokenizer.encode("b", add_special_tokens=False)[0]])


def fine_tune_py_steps(
    pipe: StableDiffusionPipeline, args: TextualInversionArguments, token: str, shots: list, seed: int
) -> tuple[torch.Tensor, list[float]]:
    """`args.max_train_steps` optimiser steps as DA-Fusion's `fine_tune.py` makes them — each batch's pixels made as
    its dataset makes them, encoded by the VAE and the posterior sampled (`latent_dist.sample()`), noised, the noise
    predicted, AdamW stepped on the input-embedding matrix and every row but the token's put back — with the
    trainer's random draws, in the trainer's order. Returns the token's row after the steps, and each step's loss."""
    tokenizer = copy.deepcopy(pipe.tokenizer)
    tokenizer.add_tokens(token)
    token_id = tokenizer.convert_tokens_to_ids(token)
    (initializer_id,) = tokenizer.encode(args.initializer_token, add_special_tokens=False)
    text_encoder = copy.deepcopy(pipe.text_encoder)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the new row is overwritten next
    embeddings = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        embeddings[token_id] = embeddings[initializer_id]
    original = embeddings.detach().clone()
    pipe.vae.requires_grad_(False)
    pipe.unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    text_encoder.get_input_embeddings().requires_grad_(True)
    optimizer = torch.optim.AdamW(
        text_encoder.get_input_embeddings().parameters(),
        lr=args.learning_rate * args.gradient_accumulation_steps * args.train_batch_size,  # --scale_lr
        betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
    )
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    # The draws: the shuffled dataset of `repeats` copies of the shots (one epoch is enough here), then per batch
    # each image's template and flip, the posterior sample, the noise and the timesteps.
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    order = rng.permutation(len(shots) * args.repeats) % len(shots)
    assert args.max_train_steps * args.train_batch_size <= len(order)
    losses = []
    for step in range(args.max_train_steps):
        batch = order[step * args.train_batch_size : (step + 1) * args.train_batch_size]
        templates = rng.integers(len(IMAGENET_TEMPLATES_SMALL), size=len(batch))
        flips = rng.random(len(batch)) < 0.5
        pixels = []
        for shot, flip in zip(batch, flips):
            image = shots[shot].convert("RGB").resize((args.resolution,) * 2, resample=PIL.Image.BICUBIC)
            if flip:
                image = image.transpose(PIL.Image.FLIP_LEFT_RIGHT)
            array = (np.array(image).astype(np.uint8) / 127.5 - 1.0).astype(np.float32)
            pixels.append(torch.from_numpy(array).permute(2, 0, 1))
        latents = pipe.vae.encode(torch.stack(pixels)).latent_dist.sample(generator).detach() * 0.18215
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(batch),), generator=generator)
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        input_ids = tokenizer(
            [IMAGENET_TEMPLATES_SMALL[index].format(token) for index in templates], padding="max_length",
            truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt",
        ).input_ids
        encoder_hidden_states = text_encoder(input_ids)[0]
        model_pred = pipe.unet(noisy_latents, timesteps, encoder_hidden_states).sample
        loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            keep = torch.arange(len(tokenizer)) != token_id
            embeddings[keep] = original[keep]
        losses.append(loss.item())
    return embeddings[token_id].detach().clone(), losses


def test_steps_on_the_cached_posterior_are_fine_tune_pys_steps_on_the_re_encoded_batch(kit):
    """The trainer samples the posterior of each shot's encoding, cached per flip; `fine_tune.py` encodes every batch
    again. Given the same draws they are the same computation: the same losses and the same row. Two steps, since
    AdamW's first step moves each coordinate by about ±lr whatever the gradient's size."""
    pipe = load_pipe(kit)
    assert pipe.vae.config.scaling_factor == 0.18215  # the factor `fine_tune.py` writes out
    args, shots = kit_args(max_train_steps=2), noise_shots()
    learned = TextualInversionTrainer(pipe, args).train("<pug>", shots, seed=5, show_progress=False)
    row, losses = fine_tune_py_steps(load_pipe(kit), args, "<pug>", shots, seed=5)
    # Measured: equal losses and rows within 2e-9. Dropping the posterior sample moved the first loss by 1.1e-5
    # (relative) and the row by 4e-3; ignoring the flips, 8e-5 and 1.2e-5.
    assert learned.losses == pytest.approx(losses, rel=1e-6)
    torch.testing.assert_close(learned.embedding, row, rtol=0, atol=1e-7)

    # Or the comparison proves nothing: the steps moved the row, and other draws give other losses and another row.
    rows = pipe.text_encoder.get_input_embeddings().weight
    initial = rows[pipe.tokenizer.encode("a", add_special_tokens=False)[0]]
    assert (learned.embedding - initial).abs().max() > 1e-4
    other_row, other_losses = fine_tune_py_steps(load_pipe(kit), args, "<pug>", shots, seed=6)
    assert all(abs(other - loss) > 1e-3 * loss for other, loss in zip(other_losses, losses))
    assert (other_row - row).abs().max() > 1e-4


def test_the_loss_falls_on_a_solid_colour_class(kit):
    pipe = load_pipe(kit)
    shots = [PIL.Image.new("RGB", (40, 30), (220, 20, 20))]
    seed = class_seed(0, "red")
    trained = TextualInversionTrainer(pipe, kit_args(max_train_steps=30)).train("<red>", shots, seed)
    # The same draws (batches, templates, flips, noise, timesteps) with the token held at its initial embedding.
    frozen = TextualInversionTrainer(pipe, kit_args(max_train_steps=30, learning_rate=1e-30)).train(
        "<red>", shots, seed
    )
    losses, untrained = np.array(trained.losses), np.array(frozen.losses)
    assert losses[0] == pytest.approx(untrained[0], rel=1e-6)  # step 1 runs before any update
    # On the kit the draw-to-draw spread of the loss (std 0.010–0.017 around 1.11) is larger than what one token can
    # take out of a random UNet: the untrained run's last 10 steps average anywhere from 0.5 % below to 0.5 % above
    # its first 10, and the trained run's from 0.9 % below to 0.2 % above (seeds `class_seed(0…4, "red")`), so
    # "last vs first steps" alone would pass unlearned and fail learned. Each step is therefore paired with the same
    # step of the untrained run, which had the same draws. Measured with this setting (30 steps, DA-Fusion's lr
    # 5e-4 · 4), over those 5 seeds: the trained run's last 10 steps are 0.40–0.46 % below the untrained run's, its
    # first 10 steps 0.12–0.14 %; float32 noise between two runs of the same draws is below 1e-6. The threshold,
    # 0.2 %, is half the smallest gain.
    relative = (losses - untrained) / untrained
    assert relative[-10:].mean() < -0.002, relative
    assert relative[-10:].mean() < relative[:10].mean()


def test_only_the_new_tokens_row_learns_and_the_pipeline_is_left_as_it_was(kit):
    pipe = load_pipe(kit)
    before = {
        name: {key: value.clone() for key, value in getattr(pipe, name).state_dict().items()}
        for name in ("text_encoder", "unet", "vae")
    }
    flags = {name: [parameter.requires_grad for parameter in getattr(pipe, name).parameters()]
             for name in ("text_encoder", "unet", "vae")}
    vocabulary = len(pipe.tokenizer)
    trainer = TextualInversionTrainer(pipe, kit_args(max_train_steps=2, gradient_checkpointing=True))
    learned = trainer.train("<pug>", [PIL.Image.new("RGB", (32, 32), (10, 200, 30))], seed=1, show_progress=False)

    # The trained copy: the token's row moved away from 'a', every other weight is the pipeline's, bit for bit.
    token_id = trainer.tokenizer.convert_tokens_to_ids("<pug>")
    assert token_id == vocabulary  # one row added
    trained = trainer.text_encoder.state_dict()
    embedding_key = next(name for name, parameter in trainer.text_encoder.named_parameters()
                         if parameter is trainer.text_encoder.get_input_embeddings().weight)
    assert torch.equal(trained[embedding_key][:vocabulary], before["text_encoder"][embedding_key])
    initial = before["text_encoder"][embedding_key][pipe.tokenizer.convert_tokens_to_ids("a</w>")]
    assert not torch.allclose(trained[embedding_key][token_id], initial)
    assert torch.equal(trained[embedding_key][token_id], learned.embedding)
    for key, value in before["text_encoder"].items():
        if key != embedding_key:
            assert torch.equal(trained[key], value), key

    # The pipeline: the same tokenizer, weights, gradient flags and gradient checkpointing as before.
    assert len(pipe.tokenizer) == vocabulary and "<pug>" not in pipe.tokenizer.get_vocab()
    for name, weights in before.items():
        for key, value in getattr(pipe, name).state_dict().items():
            assert torch.equal(value, weights[key]), f"{name}.{key}"
    for name, requires_grad in flags.items():
        assert [parameter.requires_grad for parameter in getattr(pipe, name).parameters()] == requires_grad, name
        assert all(parameter.grad is None for parameter in getattr(pipe, name).parameters()), name
    assert not pipe.unet.is_gradient_checkpointing


def test_gradient_checkpointing_learns_the_same_token(kit):
    pipe = load_pipe(kit)
    shots = [PIL.Image.new("RGB", (32, 32), (10, 200, 30))]
    plain = TextualInversionTrainer(pipe, kit_args(max_train_steps=2)).train("<pug>", shots, 1, show_progress=False)
    checkpointed = TextualInversionTrainer(pipe, kit_args(max_train_steps=2, gradient_checkpointing=True)).train(
        "<pug>", shots, 1, show_progress=False
    )
    torch.testing.assert_close(checkpointed.embedding, plain.embedding, rtol=0, atol=1e-6)
    assert checkpointed.losses == pytest.approx(plain.losses, abs=1e-6)


def test_shots_are_the_ones_augment_takes(pets):
    source = SourceArguments(dataset=str(pets / "dataset"), num_shots=2, shot_selection="paper")
    shots = class_shots(source, seed=3)
    real = load_real_images(source)
    selected = select_few_shot(real.labels, real.class_names, 2, 3, protocol="paper")
    assert list(shots) == PETS_CLASSES
    for name in PETS_CLASSES:
        rows = [index for index in selected if real.class_names[real.labels[index]] == name]
        expected = [load_image(value) for value in real.dataset.select(rows)["image"]]
        assert [np.asarray(image).tolist() for image in shots[name]] == [np.asarray(e).tolist() for e in expected]


def test_tokens_load_with_diffusers_and_change_its_images(trained, kit):
    assert class_token("persian cat") == "<persian_cat>"
    tokens = {name: class_token(name) for name in PETS_CLASSES}
    record = json.loads((trained / RECORD_FILE).read_text())
    assert {name: entry["token"] for name, entry in record["classes"].items()} == tokens
    assert record["textual_inversion"]["max_train_steps"] == STEPS

    def image(pipe, prompt):
        return pipe(prompt, num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    # One class's file, as diffusers loads any textual inversion.
    learned = load_pipe(kit)
    learned.load_textual_inversion(str(token_path(trained, "persian cat")))
    (token, embedding), = load_file(token_path(trained, "persian cat")).items()
    assert token == "<persian_cat>"
    token_id = learned.tokenizer.convert_tokens_to_ids(token)
    assert torch.equal(learned.text_encoder.get_input_embeddings().weight[token_id], embedding)
    # The same token at its initial embedding ('a'): the learned one must change the image of a prompt with it.
    initial = load_pipe(kit)
    rows = initial.text_encoder.get_input_embeddings().weight
    initial.load_textual_inversion({token: rows[initial.tokenizer.convert_tokens_to_ids("a</w>")].detach().clone()})
    with_token = "a photo of a <persian_cat>"
    assert np.abs(image(learned, with_token) - image(initial, with_token)).max() > 1e-3
    assert np.array_equal(image(learned, "a photo of a cat"), image(initial, "a photo of a cat"))

    # Every class at once: the file of all classes, or the class files as a list.
    everything = load_pipe(kit)
    assert load_class_tokens(everything, trained / ALL_TOKENS_FILE) == list(tokens.values())
    listed = load_pipe(kit)
    listed.load_textual_inversion([str(token_path(trained, name)) for name in PETS_CLASSES])
    for pipe in (everything, listed):
        for name, token in tokens.items():
            row = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids(token)]
            assert torch.equal(row, load_file(token_path(trained, name))[token])
    assert np.array_equal(image(everything, with_token), image(learned, with_token))


def test_sigkill_resumes_without_training_finished_classes_again(trained, kit, pets, tmp_path):
    output = tmp_path / "killed"
    config = tmp_path / "config.json"
    config.write_text(json.dumps(command_options(kit, pets, output)))
    command = [*dalda_command(), "textual-inversion", str(config)]
    kill_midway(command, ready=lambda: len(list((output / "tokens").glob("*.safetensors"))) >= 1, env=ONE_THREAD)
    finished = file_stamps(output / "tokens")
    assert 1 <= len(finished) < len(PETS_CLASSES)
    assert not (output / ALL_TOKENS_FILE).exists()

    result = run_dalda("textual-inversion", config, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == {name: class_token(name) for name in PETS_CLASSES}
    stamps = file_stamps(output / "tokens")
    for path, stamp in finished.items():
        assert stamps[path] == stamp, f"{path.name} was trained again"
    assert len(stamps) == len(PETS_CLASSES)
    assert not list(output.rglob("*.tmp"))
    # Each class learned what the uninterrupted run learned: a token depends on its class only.
    resumed, uninterrupted = load_file(output / ALL_TOKENS_FILE), load_file(trained / ALL_TOKENS_FILE)
    assert list(resumed) == list(uninterrupted)
    for token, embedding in uninterrupted.items():
        torch.testing.assert_close(resumed[token], embedding, rtol=0, atol=1e-5)


def test_a_changed_setting_is_refused(trained, kit, pets):
    finished = file_stamps(trained / "tokens")
    with pytest.raises(ValueError, match=r"other settings \(textual_inversion\)"):
        run_in_process(command_options(kit, pets, trained, max_train_steps=STEPS + 1))
    with pytest.raises(ValueError, match=r"other settings \(classes, source\)"):
        run_in_process(command_options(kit, pets, trained, num_shots=1))
    with pytest.raises(ValueError, match=r"other settings \(.*textual_inversion\)"):
        run_in_process(command_options(kit, pets, trained, seed=1))
    # Speed and memory settings are not the method's: a finished run stays finished, nothing trained again.
    run_in_process(command_options(kit, pets, trained, gradient_checkpointing=True, mixed_precision="no"))
    assert file_stamps(trained / "tokens") == finished
    # The command line says it in one line.
    result = run_dalda("textual-inversion", *[
        f"--{key}={value}" for key, value in command_options(kit, pets, trained, learning_rate=1e-3).items()
    ])
    assert result.returncode != 0
    assert "holds a run made with other settings (textual_inversion)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_inputs_are_named(kit, tiny_models, tmp_path):
    pipe = load_pipe(kit)
    with pytest.raises(ValueError, match="`initializer_token` 'the' is 3 tokens"):
        TextualInversionTrainer(pipe, kit_args(initializer_token="the"))
    with pytest.raises(ValueError, match="The UNet carries an IP-Adapter"):
        TextualInversionTrainer(load_ip_adapter(load_pipe(kit), tiny_models), kit_args())
    shots = {"Cat": [PIL.Image.new("RGB", (8, 8))], "cat": [PIL.Image.new("RGB", (8, 8))]}
    with pytest.raises(ValueError, match="would share the token"):
        train_class_tokens(pipe, shots, kit_args(), tmp_path / "out")
    with pytest.raises(ValueError, match="No images for the classes"):
        train_class_tokens(pipe, {"cat": []}, kit_args(), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None,
                    reason="accelerate's launcher is not installed beside this Python")
def test_two_accelerate_processes_share_the_classes(trained, kit, pets, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(command_options(kit, pets, tmp_path / "two")))
    run_in_two_processes("textual-inversion", config)
    shared, alone = load_file(tmp_path / "two" / ALL_TOKENS_FILE), load_file(trained / ALL_TOKENS_FILE)
    assert list(shared) == list(alone)
    for token, embedding in alone.items():
        torch.testing.assert_close(shared[token], embedding, rtol=0, atol=1e-5)


def test_components_need_not_be_a_pipeline(kit, tmp_path):
    pipe = load_pipe(kit)
    components = types.SimpleNamespace(
        tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, unet=pipe.unet, vae=pipe.vae,
        scheduler=pipe.scheduler,
    )
    tokens = train_class_tokens(components, {"red fox": [PIL.Image.new("RGB", (8, 8), (200, 80, 0))]},
                                kit_args(max_train_steps=2), tmp_path / "out", seed=5)
    assert tokens == {"red fox": "<red_fox>"}
    assert list(load_file(tmp_path / "out" / ALL_TOKENS_FILE)) == ["<red_fox>"]
