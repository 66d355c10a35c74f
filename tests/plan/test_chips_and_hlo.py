"""The planner's parts that need no compile: topology names, the named architectures against transformers, the
collectives read from HLO text and their ring times."""

import pytest

from adapt.core.errors import CheckpointError, ConfigError
from adapt.plan import hlo
from adapt.plan.chips import CHIPS, parse


@pytest.mark.parametrize("name, chips, marketing", [("v5e:2x4", 8, "v5e-8"), ("v5p:2x2x1", 4, "v5p-8"),
                                                    ("v4:2x2x2", 8, "v4-16"), ("v6e:16x16", 256, "v6e-256"),
                                                    ("cpu:8", 8, "8 CPU devices"), ("h100:8", 8, "8x H100")])
def test_a_topology_counts_chips_and_says_its_marketing_name(name, chips, marketing):
    t = parse(name)
    assert (t.chips, t.marketing_name()) == (chips, marketing)


@pytest.mark.parametrize("name, says", [("v7x:2x2", "unknown generation 'v7x'"), ("v5e-8", "is not a topology"),
                                        ("v5p:2x2", "a v5p slice has 3 dimensions"), ("cpu:2x2", "cpu:<n>"),
                                        ("h100:16", "h100 takes the GPUs of one host, h100:<1-8>")])
def test_a_bad_topology_is_one_line_naming_the_syntax(name, says):
    with pytest.raises(ConfigError) as e:
        parse(name)
    assert says in str(e.value) and "\n" not in str(e.value)
    if "unknown" in says or "not a topology" in says:
        assert all(g in str(e.value) for g in CHIPS)


def test_wraparound_follows_the_generation():
    """v5e/v6e slices are rings only along a full pod side (16); v4/v5p along sides that are multiples of 4."""
    assert not parse("v5e:2x4").wraps(4) and parse("v5e:16x16").wraps(16)
    assert parse("v5p:4x4x4").wraps(4) and not parse("v5p:2x2x1").wraps(2)


# Every named architecture's parameters, by transformers' own model on the meta device (no memory), and ours built
# abstractly: the same count, so the committed configs describe the models they name (the largest in the slow tier).
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) for n in ("llama-3.1-8b", "llama-3.1-70b",
                                                                                     "qwen2.5-7b", "qwen2.5-32b")]
                         + [pytest.param(n, marks=pytest.mark.slow) for n in ("mistral-7b-v0.3", "roberta-large",
                                                                              "gemma-3-12b", "mixtral-8x7b",
                                                                              "qwen3-30b-a3b")]
                         + ["smollm2-1.7b"])
def test_a_named_architecture_is_transformers_model_of_the_same_size(name):
    import jax
    import torch
    import transformers
    from flax import nnx

    from adapt.models.loading import model_blueprint

    blueprint = model_blueprint(f"arch:{name}")
    with torch.device("meta"):
        theirs = transformers.AutoModelForMaskedLM if blueprint.head == "masked_lm" else \
            transformers.AutoModelForCausalLM
        reference = theirs.from_config(blueprint.hf)
    ours = nnx.eval_shape(lambda: blueprint.construct(nnx.Rngs(0)))
    count = sum(x.size for x in jax.tree.leaves(nnx.state(ours, nnx.Param)))
    assert count == sum(p.numel() for p in reference.parameters())  # a tied head's weight once, as theirs
    assert blueprint.source.name == f"arch:{name}"


def test_a_named_architecture_has_no_weights_to_train_from():
    from adapt.models import from_pretrained, load_tokenizer

    for load in (lambda: from_pretrained("arch:llama-3.1-8b"), lambda: load_tokenizer("arch:qwen2.5-7b"),
                 lambda: from_pretrained("arch:llama-3.1-8b", random_init=True)):
        with pytest.raises(CheckpointError, match="is an architecture without weights or tokenizer: plan a run"):
            load()
    with pytest.raises(CheckpointError, match="unknown architecture 'arch:llama-9'; named architectures: arch:"):
        from_pretrained("arch:llama-9")


HLO = """
  %all-gather.1 = bf16[8,64]{1,0} all-gather(%p0), channel_id=1, replica_groups={{0,1,2,3}}, dimensions={0}
  %ags = (bf16[2,64]{1,0}, bf16[8,64]{1,0}) all-gather-start(%p1), channel_id=2, replica_groups=[1,4]<=[4], dims={0}
  %all-reduce.2 = (f32[16]{0}, f32[48]{0}) all-reduce(%a, %b), channel_id=3, replica_groups=[2,2]<=[2,2]T(1,0)
  %rs = f32[4,8]{1,0} reduce-scatter(%c), channel_id=4, replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_1'}
  ROOT %a2a = bf16[4,16]{1,0} all-to-all(%d), channel_id=5, replica_groups=mesh['axis_0'=4,'axis_1'=1] {'axis_0'}
  %fusion.3 = f32[8] fusion(%all-gather.1), kind=kLoop, calls=%fused_computation
"""


def test_collectives_are_read_with_their_bytes_and_groups():
    found = hlo.collectives(HLO, 4)
    assert [(c.kind, c.bytes, c.groups) for c in found] == [
        ("all-gather", 8 * 64 * 2, ((0, 1, 2, 3),)),
        ("all-gather", 8 * 64 * 2, ((0, 1, 2, 3),)),  # an async start's result, not its operand
        ("all-reduce", (16 + 48) * 4, ((0, 2), (1, 3))),  # iota groups, transposed
        ("reduce-scatter", 4 * 8 * 4 * 2, ((0, 1), (2, 3))),  # its operand: the result times the group
        ("all-to-all", 4 * 16 * 2, ((0, 1, 2, 3),))]
    assert hlo.summary(found)["all-gather"] == {"count": 2, "bytes": 2048.0}


def test_libtpu_s_fused_reduce_scatter_is_a_reduce_scatter():
    """libtpu writes a reduce-scatter as a fusion calling ``%all-reduce-scatter``: an all-reduce of the whole operand
    and each chip's slice of it (as in MaxText's compiled Llama step); it is one reduce-scatter of the operand's
    bytes, not an all-reduce (which would cost twice the time)."""
    text = """%all-reduce-scatter.2 (input.2: bf16[4096,512]) -> bf16[1024,512] {
  %input.2 = bf16[4096,512]{1,0:T(8,128)(2,1)} parameter(0)
  %all-reduce.49 = bf16[4096,512]{1,0:T(8,128)(2,1)} all-reduce(%input.2), channel_id=33, replica_groups={{0,1,2,3}}, use_global_device_ids=true, to_apply=%add.1.clone
  ROOT %dynamic-slice.65 = bf16[1024,512]{1,0} dynamic-slice(%all-reduce.49, %m, %z), dynamic_slice_sizes={1024,512}
}

ENTRY %main.1 (p: bf16[4096,512]) -> bf16[1024,512] {
  %all-reduce.50 = f32[8]{0} all-reduce(%q), channel_id=34, replica_groups={{0,1,2,3}}, to_apply=%add.1.clone
  ROOT %fusion.7 = bf16[1024,512]{1,0} fusion(%p), kind=kCustom, calls=%all-reduce-scatter.2
}
"""  # noqa: E501 (HLO's own lines)
    found = hlo.collectives(text, 4)
    assert [(c.kind, c.bytes) for c in found] == [("reduce-scatter", 4096 * 512 * 2), ("all-reduce", 8 * 4)]


def test_a_collective_takes_its_ring_time_over_the_links_it_spans():
    """On v5p:4x4x4 (every axis a ring): an all-gather of B bytes over 4 chips along one axis moves 3B/4 over both
    directions of that axis's links; an all-reduce over all 64 chips twice 63B/64 over three axes' links; on v5e:2x4
    (no wraparound) an axis's ring has one direction."""
    link = CHIPS["v5p"].ici_link_bandwidth
    cube = [(x, y, z) for z in range(4) for y in range(4) for x in range(4)]
    gather = hlo.Collective("all-gather", 4e6, ((0, 1, 2, 3),))
    assert hlo.seconds(gather, parse("v5p:4x4x4"), cube) == pytest.approx(4e6 * 3 / 4 / (2 * link))
    everyone = hlo.Collective("all-reduce", 1e6, (tuple(range(64)),))
    assert hlo.seconds(everyone, parse("v5p:4x4x4"), cube) == pytest.approx(2 * 1e6 * 63 / 64 / (3 * 2 * link))
    line = [(x, y) for y in range(4) for x in range(2)]
    pair = hlo.Collective("all-gather", 1e6, ((0, 2, 4, 6),))  # the 4 chips of x = 0: y's axis, not a ring
    assert hlo.seconds(pair, parse("v5e:2x4"), line) == pytest.approx(1e6 * 3 / 4 / CHIPS["v5e"].ici_link_bandwidth)
    assert hlo.seconds(gather, parse("cpu:4"), [(i,) for i in range(4)]) == 0.0
    # H100s of one host: NVSwitch, every GPU at its NVLink bandwidth whatever the group
    assert hlo.seconds(gather, parse("h100:8"), [(0, 0, i) for i in range(8)]) == pytest.approx(
        4e6 * 3 / 4 / CHIPS["h100"].ici_link_bandwidth)
