"""格律 after 平水韵: the dictionary, the templates, the checker, and the decoding masks agreeing."""
import json
import re

import numpy as np
import pytest

from rnnjax.poetry import prosody as P

DENG_GUAN_QUE_LOU = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"       # 王之涣, 五言绝句
CHUN_WANG = ("国破山河在，城春草木深。感时花溅泪，恨别鸟惊心。"             # 杜甫, 五言律诗
             "烽火连三月，家书抵万金。白头搔更短，浑欲不胜簪。")
CHU_SAI = "秦时明月汉时关，万里长征人未还。但使龙城飞将在，不教胡马度阴山。"  # 王昌龄, 七言绝句
JING_YE_SI = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"            # 李白, an old-style quatrain

ZHI_QI_BU_RU_YUN_5x4 = P.template_index("5x4", "仄起不入韵")


def with_line(poem: str, line: int, text: str) -> str:
    """``poem`` with its 1-based ``line`` replaced (punctuation kept)."""
    parts = re.findall("[^，。]+[，。]", poem)
    parts[line - 1] = text + parts[line - 1][-1]
    return "".join(parts)


def needs(report) -> set:
    return {(v.line, v.pos, v.char, v.need) for v in report.violations}


# --------------------------------------------------------------------------------------------
# The dictionary


def test_rusheng_characters_are_oblique():
    # Level in Mandarin, 入声 in 平水韵: the reason --rhyme by pinyin is wrong for classical verse.
    for ch in "石白国一":
        assert P.tone_class(ch) == P.ZE, ch
    assert P.tone_class("國") == P.ZE  # the traditional character keeps its own reading


def test_dual_tone_characters_are_both():
    for ch in "看思望":
        assert P.tone_class(ch) == P.BOTH, ch
    assert P.level_groups("看") == ("上平声十四寒",)


def test_characters_missing_from_the_dictionary_are_unknown():
    for ch in ("䶮", "a", "P", "，"):  # a rare Extension-A character; Latin the scrape left behind
        assert P.tone_class(ch) == P.UNKNOWN, ch
        assert P.level_groups(ch) == ()


def test_simplified_character_unites_its_traditional_sources():
    # 还 comes from 還, which sits in both 删 and 先; 流 and 楼 share 尤.
    assert set(P.level_groups("还")) == {"上平声十五删", "下平声一先"}
    assert P.level_groups("流") == P.level_groups("楼") == ("下平声十一尤",)
    assert len(P.group_names()) == 30


# --------------------------------------------------------------------------------------------
# Templates


def test_quatrain_templates_are_the_standard_ones():
    spelled = {P.TEMPLATES[i].name: P.TEMPLATES[i].spelled() for i in P.template_for("5x4")}
    assert spelled == {
        "仄起不入韵": "仄仄平平仄，平平仄仄平。平平平仄仄，仄仄仄平平。",
        "仄起入韵": "仄仄仄平平，平平仄仄平。平平平仄仄，仄仄仄平平。",
        "平起不入韵": "平平平仄仄，仄仄仄平平。仄仄平平仄，平平仄仄平。",
        "平起入韵": "平平仄仄平，仄仄仄平平。仄仄平平仄，平平仄仄平。",
    }
    seven = {P.TEMPLATES[i].name: P.TEMPLATES[i].patterns[0] for i in P.template_for("7x4")}
    assert seven["平起入韵"] == "平平仄仄仄平平" and seven["仄起入韵"] == "仄仄平平仄仄平"
    assert seven["平起不入韵"] == "平平仄仄平平仄" and seven["仄起不入韵"] == "仄仄平平平仄仄"


@pytest.mark.parametrize("index", range(16))
def test_templates_keep_nian_dui_and_rhyme(index):
    t = P.TEMPLATES[index]
    n_lines, line_len = t.codes.shape
    assert t.form == f"{line_len}x{n_lines}"
    second = [p[1] for p in t.patterns]
    for i in range(0, n_lines, 2):
        assert second[i] != second[i + 1]          # 对 within a couplet
    for i in range(1, n_lines - 1, 2):
        assert second[i] == second[i + 1]          # 粘 across couplets
    rhymes = [i for i in range(n_lines) if t.codes[i, -1] == P.RHYME]
    first = [] if t.name.endswith("不入韵") else [0]
    assert rhymes == first + list(range(1, n_lines, 2))
    assert set(t.codes[:, 1::2].ravel()) <= {P.LEVEL, P.OBLIQUE, P.RHYME}  # even positions strict
    assert t.name[0] == second[0]                  # 平起 / 仄起 by line 1's 2nd character
    assert all(p[-1] == "仄" for p in t.patterns[2::2])  # lines 3, 5, 7 end oblique, unrhymed
    if n_lines == 8:  # 律诗: the quatrain, then the 不入韵 quatrain of the same 起
        quatrain = P.TEMPLATES[P.template_index(f"{line_len}x4", t.name)]
        second_half = P.TEMPLATES[P.template_index(f"{line_len}x4", t.name[:2] + "不入韵")]
        assert t.patterns == quatrain.patterns + second_half.patterns
        np.testing.assert_array_equal(t.codes[4:], second_half.codes)


def test_stacked_codes_hold_every_template():
    stack = P.stacked_codes()
    assert stack.shape == (16, 8, 7)
    for i, t in enumerate(P.TEMPLATES):
        n, m = t.codes.shape
        np.testing.assert_array_equal(stack[i, :n, :m], t.codes)
        assert not stack[i, n:].any() and not stack[i, :, m:].any()
    assert len(set(P.TEMPLATE_NAMES)) == 16


# --------------------------------------------------------------------------------------------
# The checker on real poems


@pytest.mark.parametrize("poem, form, template, group", [
    (DENG_GUAN_QUE_LOU, "5x4", "仄起不入韵", "下平声十一尤"),
    (CHUN_WANG, "5x8", "仄起不入韵", "下平声十二侵"),
    (CHU_SAI, "7x4", "平起入韵", "上平声十五删"),
])
def test_regulated_verse_passes(poem, form, template, group):
    r = P.check_poem(poem)
    assert (r.form, r.template, r.rhyme_group) == (form, template, group)
    assert r.violations == []
    assert r.passes_meter and r.rhymes


def test_jing_ye_si_fails_and_names_the_positions():
    r = P.check_poem(JING_YE_SI)
    assert r.form == "5x4" and r.template == "平起入韵"
    assert needs(r) == {(2, 4, "上", "平"), (3, 2, "头", "仄")}
    assert not r.passes_meter
    assert r.rhymes  # 光 霜 乡 all rhyme in 阳: the fault is the tones
    assert r.tones[0] == "平平平仄平"


def test_ties_go_to_the_earlier_template():
    # 关 again at line 2: 重韵 under 平起入韵, line 1 unrhymed 平 under 平起不入韵; one fault each.
    r = P.check_poem(with_line(CHU_SAI, 2, "万里长征人未关"))
    assert r.template == "平起不入韵" and needs(r) == {(1, 7, "关", "仄")}


def test_report_is_plain_data():
    d = json.loads(P.check_poem(JING_YE_SI).to_json())
    assert d["violations"][0] == {"line": 2, "pos": 4, "char": "上", "need": "平"}
    assert d["template"] == "平起入韵" and d["form"] == "5x4"


def test_other_shapes_have_no_form():
    for text in ("床前明月光，疑是地上霜。", "春眠不觉晓，处处闻啼鸟，夜来风雨声，花落知多少，春天。"):
        r = P.check_poem(text)
        assert r.form is None and r.template is None and not r.passes_meter


# --------------------------------------------------------------------------------------------
# The rules on constructed lines (登鹳雀楼 with one line changed)


def test_gu_ping_is_wrong_and_its_rescue_fine():
    # Line 2 has the 平平仄仄平 type: 仄平仄仄平 keeps one level character besides the rhyme.
    r = P.check_poem(with_line(DENG_GUAN_QUE_LOU, 2, "白河入海流"), [ZHI_QI_BU_RU_YUN_5x4])
    assert needs(r) == {(2, 3, "入", "孤平")}
    for fine in ("白河山海流", "看河入海流", "黄河入海流"):  # 拗救; dual tone; the original
        assert P.check_poem(with_line(DENG_GUAN_QUE_LOU, 2, fine)).passes_meter, fine


def test_san_ping_wei_is_wrong():
    r = P.check_poem(with_line(DENG_GUAN_QUE_LOU, 4, "更上山层楼"), [ZHI_QI_BU_RU_YUN_5x4])
    assert needs(r) == {(4, 3, "山", "三平尾")}
    assert P.check_poem(with_line(DENG_GUAN_QUE_LOU, 4, "更上看层楼")).passes_meter  # 看: dual


def test_dual_tone_fits_either_strict_tone():
    assert P.check_poem(with_line(DENG_GUAN_QUE_LOU, 1, "白看依山尽")).passes_meter  # needs 仄
    assert P.check_poem(with_line(DENG_GUAN_QUE_LOU, 1, "白日依看尽")).passes_meter  # needs 平
    r = P.check_poem(with_line(DENG_GUAN_QUE_LOU, 1, "白山依山尽"), [ZHI_QI_BU_RU_YUN_5x4])
    assert needs(r) == {(1, 2, "山", "仄")}


def test_unknown_tone_only_on_free_positions():
    assert P.check_poem(with_line(DENG_GUAN_QUE_LOU, 1, "䶮日依山尽")).passes_meter
    r = P.check_poem(with_line(DENG_GUAN_QUE_LOU, 1, "白䶮依山尽"), [ZHI_QI_BU_RU_YUN_5x4])
    assert needs(r) == {(1, 2, "䶮", "仄")}
    # Free, but not level for 孤平.
    r = P.check_poem(with_line(DENG_GUAN_QUE_LOU, 2, "䶮河入海流"), [ZHI_QI_BU_RU_YUN_5x4])
    assert needs(r) == {(2, 3, "入", "孤平")}


def test_rhyme_group_and_repeats():
    r = P.check_poem(with_line(DENG_GUAN_QUE_LOU, 4, "更上一层山"), [ZHI_QI_BU_RU_YUN_5x4])
    assert needs(r) == {(4, 5, "山", "押韵")} and not r.rhymes
    r = P.check_poem(with_line(DENG_GUAN_QUE_LOU, 4, "更上一层流"), [ZHI_QI_BU_RU_YUN_5x4])
    assert needs(r) == {(4, 5, "流", "重韵")} and not r.rhymes
    # Rhyme alone, whatever the tones: 静夜思's even lines (and its line 1) share 阳.
    assert P.check_rhyme(JING_YE_SI) == (True, "下平声七阳")
    assert P.check_rhyme(JING_YE_SI, first_line=True)[0]
    assert P.check_rhyme(with_line(JING_YE_SI, 4, "低头思故人"))[0] is False


def test_show_tones():
    codes = P.TEMPLATES[ZHI_QI_BU_RU_YUN_5x4].codes
    assert P.show_tones("白日依山尽，", codes[0]) == "白 日 依 山 尽\n仄 仄 平 平 仄\n中 仄 中 平 仄"
    assert P.show_tones("黄河入海流", codes[1]).splitlines()[2] == "中 平 中 仄 韵"
    assert P.show_tones("更上山层楼", codes[3]).splitlines()[2] == "中 仄 仄 平 韵  ✗ 3:三平尾"
    assert "格律: passes" in P.show_poem(DENG_GUAN_QUE_LOU)


# --------------------------------------------------------------------------------------------
# Prefixes and acrostic heads


def test_fit_templates_follows_the_prefix():
    names = lambda idx: [P.TEMPLATES[i].name for i in idx]  # noqa: E731
    assert names(P.fit_templates("5x4", "床前明月光，")) == ["平起入韵"]
    assert names(P.fit_templates("5x4", "白日依山尽，黄河入海流。欲穷")) == ["仄起不入韵"]
    assert names(P.fit_templates("5x4", "白日")) == ["仄起不入韵", "仄起入韵"]
    assert len(P.fit_templates("7x8", "", "春夏秋冬东南西北")) == 4   # heads are on free positions
    assert len(P.fit_templates("5x4", "", "䶮䶮䶮䶮")) == 4
    assert P.misfit_message("5x4", "床前明月光，") is None


def test_misfit_message_names_character_line_position_and_tone():
    msg = P.misfit_message("5x4", "白日依山光，")
    assert P.fit_templates("5x4", "白日依山光，") == []
    assert "'光' (line 1, position 5) is 平" in msg and "needs 仄 there" in msg
    assert "\n" not in msg
    msg = P.misfit_message("5x4", "白日依山尽，黄河入海流。欲穷千里目，更上一层山。")
    assert "'山' (line 4, position 5)" in msg and "押韵" in msg
    msg = P.misfit_message("5x4", "白日依山尽，白河入海流。")
    assert "'入' (line 2, position 3)" in msg and "孤平" in msg


# --------------------------------------------------------------------------------------------
# The decoding tables agree with the checker


class _Vocab:
    def __init__(self, tokens):
        self.itos = list(tokens)
        self.stoi = {t: i for i, t in enumerate(self.itos)}


# Common characters of every tone class, a few unknowns, and punctuation.
_CHARS = ("白日依山尽黄河入海流欲穷千里目更上一层楼国破城春草木深感时花溅泪恨别鸟惊心烽火连三月家书"
          "抵万金头搔短浑不胜簪秦明汉关长征人未还但使龙飞将在教胡马度阴床前光疑是地霜举望低思故乡看"
          "石风云天秋江南北东西雪月星夜空归来去远行愁君何处无有青红绿水烟寒孤舟酒声高楼台歌舞梦中"
          "䶮a")


def _vocab():
    return _Vocab(["</s>", "<START>", "<EOP>", "，", "。", *dict.fromkeys(_CHARS)])


def test_prosody_tables():
    vocab = _vocab()
    t = P.prosody_tables(vocab)
    assert not (t.level[:5].any() or t.oblique[:5].any() or t.groups[:5].any())  # specials, ，。
    kan, shi, liu, rare = (vocab.stoi[c] for c in "看石流䶮")
    assert t.level[kan] and t.oblique[kan]
    assert t.oblique[shi] and not t.level[shi]
    assert not t.level[rare] and not t.oblique[rare]
    assert t.groups[liu] == 1 << P.group_names().index("下平声十一尤")
    assert t.rows.shape == (P.N_ROWS, len(vocab.itos))
    assert P.usable_groups(t, 1) & t.groups[liu]


def _sample(tables, vocab, template, rng):
    """A poem drawn token by token from what the loop's masks allow, and the tokens."""
    t = P.TEMPLATES[template]
    chars = np.array([len(s) == 1 and s not in "，。" for s in vocab.itos])
    state = P.MaskState(rhyme_groups=P.usable_groups(tables, t.n_rhymes))
    tokens = np.zeros(t.codes.shape, int)
    for line in range(t.codes.shape[0]):
        for pos in range(t.codes.shape[1]):
            ok = np.flatnonzero(P.allowed_mask(tables, template, line, pos, state) & chars)
            tok = int(rng.choice(ok))
            assert P.mask_allows(tables, template, line, pos, state, tok)
            tokens[line, pos] = tok
            state = P.advance(tables, template, line, pos, state, tok)
    return tokens


def _text(vocab, tokens):
    return "".join("".join(vocab.itos[i] for i in row) + "，。"[k % 2]
                   for k, row in enumerate(tokens))


@pytest.mark.parametrize("template", range(16))
def test_masks_agree_with_the_checker(template):
    vocab = _vocab()
    tables = P.prosody_tables(vocab)
    rng = np.random.default_rng(template)
    chars = np.array([len(s) == 1 and s not in "，。" for s in vocab.itos])
    t = P.TEMPLATES[template]
    forbidden_checked = 0
    for _ in range(8):
        tokens = _sample(tables, vocab, template, rng)
        r = P.check_poem(_text(vocab, tokens), [template])
        assert r.violations == [], (_text(vocab, tokens), r.violations)
        assert P.check_poem(_text(vocab, tokens)).passes_meter
        # Replay from the widest state; a token it forbids anywhere must break the poem.
        state = P.MaskState()
        for line in range(t.codes.shape[0]):
            for pos in range(t.codes.shape[1]):
                bad = np.flatnonzero(~P.allowed_mask(tables, template, line, pos, state) & chars)
                for tok in rng.choice(bad, size=min(3, len(bad)), replace=False):
                    changed = tokens.copy()
                    changed[line, pos] = tok
                    report = P.check_poem(_text(vocab, changed), [template])
                    assert not report.passes_meter, (_text(vocab, changed), line, pos)
                    forbidden_checked += 1
                state = P.advance(tables, template, line, pos, state, int(tokens[line, pos]))
    assert forbidden_checked > 100


# --------------------------------------------------------------------------------------------
# The corpus command


def test_corpus_command(tmp_path, capsys):
    from rnnjax.poetry.data import Vocab, encode_poems, save_npz

    poems = [DENG_GUAN_QUE_LOU, CHUN_WANG, JING_YE_SI, CHU_SAI, "春眠不觉晓。"]
    vocab = Vocab.build(poems)
    save_npz(tmp_path / "t.npz", encode_poems(poems, vocab), vocab)
    P.main(["--data", str(tmp_path / "t.npz")])
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in out[2:]}
    assert rows["5x4"][:3] == ["2", "1", "(50.0%)"] and rows["5x4"][3] == "2"
    assert rows["5x8"][:2] == ["1", "1"] and rows["7x4"][:2] == ["1", "1"] and rows["7x8"][0] == "0"
    assert P.summarize(poems)["5x4"] == {"poems": 2, "meter": 1, "rhyme": 2}


# --------------------------------------------------------------------------------------------
# What generation uses besides: --rhyme pingshui's pseudo-template, the prefix's rhyme groups


def test_rhyme_only_template_and_prefix_checks():
    t = P.rhyme_only("5x8")
    assert t.n_rhymes == 4 and set(np.flatnonzero(t.codes.ravel())) == {9, 19, 29, 39}
    assert P.check_rhyme(JING_YE_SI)[0]
    assert P.rhyme_misfit("5x4", "白日依山尽，黄河入海流。") is None
    assert "'石' (line 2, position 5) is 仄" in P.rhyme_misfit("5x4", "白日依山尽，黄河入海石。")
    assert "押韵" in P.rhyme_misfit("5x4", "白日依山尽，黄河入海流。欲穷千里目，更上一层山。")
    you = 1 << P.group_names().index("下平声十一尤")
    assert P.given_rhyme_groups(t, "5x8", "白日依山尽，黄河入海流。") == you
    assert P.given_rhyme_groups(ZHI_QI_BU_RU_YUN_5x4, "5x4", "白日依山尽，") == P.ALL_GROUPS


def test_show_poem_under_a_given_template():
    # 登鹳雀楼 under 平起入韵 instead of its best template: the broken rules are marked.
    other = P.template_index("5x4", "平起入韵")
    shown = P.show_poem(DENG_GUAN_QUE_LOU, [other])
    assert "5x4 平起入韵" in shown and "✗" in shown and "格律: line 1" in shown
    assert "格律: passes" in P.show_poem(DENG_GUAN_QUE_LOU, [ZHI_QI_BU_RU_YUN_5x4])
