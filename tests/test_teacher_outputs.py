"""The teacher-output cache: a student trained from it sees the very images its cached targets were
computed on, views cycle as epochs pass, and the file round-trips or fails with a clear error."""

import pytest
import torch

from distillery import models, teacher_outputs
from distillery.augment import Recipe
from distillery.data import Split, batches
from distillery.errors import DistilleryError
from distillery.models import Ensemble
from distillery.training import KDSettings, Objective, seeded

CPU = torch.device("cpu")
RECIPE = Recipe(scale=0.1, levels=0.5, thicken=0.5, blur=0.5)  # every part of a view


def tiny_split(n: int = 12, size: tuple[int, int] = (12, 16)) -> Split:
    images = torch.randint(0, 256, (n, 1, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return Split(images, torch.arange(n), torch.arange(n) % 3)


def members() -> list[torch.nn.Module]:
    spec = {"arch": "student_cnn", "in_channels": 1, "num_classes": 3, "widths": [4, 8]}
    return [seeded(seed, lambda: models.build(spec)).eval() for seed in (0, 1)]


def test_a_cached_target_is_the_ensembles_output_on_the_image_the_student_sees():
    train, teachers = tiny_split(), members()
    outputs = teacher_outputs.compute(
        teachers, train, views=3, recipe=RECIPE, seed=0, device=CPU, batch_size=5
    )  # 3 batches
    objective, ensemble = Objective(outputs, KDSettings(temperature=3.0, alpha=0.5)), Ensemble(teachers)
    labels_only = Objective(outputs)  # a model trained alone from a cache sees the same images
    index = torch.tensor([7, 0, 11, 3])
    x, y = train[index]
    seen = []
    for epoch in range(1, 5):
        batch = objective.batch(x, y, index, epoch=epoch, recipe=RECIPE, generator=torch.Generator())
        alone = labels_only.batch(x, y, index, epoch=epoch, recipe=RECIPE, generator=torch.Generator())
        assert torch.equal(alone.x, batch.x) and alone.view == batch.view
        with torch.no_grad():
            live = ensemble.soft_targets(batch.x, 3.0)
            second_member = torch.softmax(teachers[1](batch.x) / 3.0, dim=1)
        assert torch.allclose(outputs.soft_targets(batch.view, index, 3.0), live, atol=1e-5)
        assert torch.allclose(outputs.member(1).soft_targets(batch.view, index, 3.0), second_member, atol=1e-5)
        seen.append(batch.x)
    assert not torch.allclose(seen[0], seen[1]) and torch.equal(seen[0], seen[3])  # 3 views, then again
    stored = objective.batch(x, y, index, epoch=2, recipe=None, generator=torch.Generator())
    assert stored.view == 0 and torch.equal(stored.x, x)


def test_views_cycle_through_the_augmented_ones_and_the_stored_images_serve_without_augmentation():
    train = tiny_split(n=4)
    three = teacher_outputs.compute(members(), train, views=3, recipe=RECIPE, seed=0, device=CPU)
    assert [three.view(epoch, augment=True) for epoch in range(1, 8)] == [1, 2, 3, 1, 2, 3, 1]
    assert {three.view(epoch, augment=False) for epoch in range(1, 5)} == {0}
    with pytest.raises(ValueError, match="at least 1"):
        teacher_outputs.compute(members(), train, views=0, recipe=RECIPE, seed=0, device=CPU)


def test_indexed_batches_say_where_their_images_are():
    train = tiny_split(n=10)
    seen = []
    for x, y, index in batches(train, 4, torch.Generator().manual_seed(3), with_index=True):
        stored_x, stored_y = train[index]
        assert torch.equal(x, stored_x) and torch.equal(y, stored_y)
        seen += index.tolist()
    assert sorted(seen) == list(range(10)) and seen != list(range(10))  # every image once, shuffled


def test_the_views_are_fixed_by_the_seed():
    train = tiny_split(n=5)
    first, again, other = (
        teacher_outputs.compute(members(), train, views=2, recipe=RECIPE, seed=seed, device=CPU) for seed in (0, 0, 1)
    )
    for part in ("theta", "paper", "ink", "thicken", "blur"):
        drawn, redrawn, elsewise = (getattr(o.augmentations, part) for o in (first, again, other))
        assert torch.equal(drawn, redrawn) and not torch.allclose(drawn[1:], elsewise[1:])
        assert torch.equal(drawn[0], elsewise[0])  # view 0: the images as stored
    assert torch.equal(first.logits, again.logits)


def test_the_cache_round_trips_and_refuses_another_dataset_or_a_damaged_file(tmp_path):
    train = tiny_split(n=6)
    outputs = teacher_outputs.compute(members(), train, views=2, recipe=RECIPE, seed=0, device=CPU)
    path = tmp_path / "outputs.safetensors"
    teacher_outputs.save(outputs, path)
    loaded = teacher_outputs.load(path, train)
    assert loaded.augmentations.to_tensors("").keys() == outputs.augmentations.to_tensors("").keys()
    for name, tensor in loaded.augmentations.to_tensors("").items():
        assert torch.equal(tensor, outputs.augmentations.to_tensors("")[name])
    assert torch.equal(loaded.logits, outputs.logits)
    with pytest.raises(DistilleryError, match="6 images, not the 5 training and unlabeled .*rerun the train_teachers"):
        teacher_outputs.load(path, tiny_split(n=5))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DistilleryError, match="damaged"):
        teacher_outputs.load(path, train)
