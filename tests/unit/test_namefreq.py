"""Building the name-frequency table (mrhub_tools.namefreq) from the source's CSV files."""

from __future__ import annotations

from pathlib import Path

from mrhub_tools.namefreq import build, write
from services.patient_index.frequencies import load_frequencies


def _source(tmp: Path) -> Path:
    (tmp / "familyname.csv").write_text(
        "\ufeffsurname,compound,initial,initial.rank,n.1930_2008,ppm.1930_2008,surname.uniqueness\n"
        "王,0,w,23,600000,600000,1\n汪,0,w,23,100000,100000,1\n欧阳,1,o,1,300000,300000,1\n",
        encoding="utf-8",
    )
    (tmp / "top1000name.prov.csv").write_text(
        "\ufeffname,n.male,n.female\n芳,1000,9000\n方,500,500\n秀英,0,20000\n",
        encoding="utf-8",
    )
    (tmp / "givenname.csv").write_text(
        "\ufeffcharacter,pinyin,name.ppm\n芳,fang1,100000\n秀,xiu4,300000\n英,ying1,400000\n",
        encoding="utf-8",
    )
    return tmp


def test_pinyin_rows_add_up_the_names_that_read_alike(tmp_path: Path) -> None:
    rows = {(k, key): v for k, key, v in build(_source(tmp_path))}
    # 王 and 汪 both read wang: a Latin "Wang" may be either
    assert rows[("surname_py", "wang")] == rows[("surname", "王")] + rows[("surname", "汪")]
    # given names are per million of the population (the surnames' counts add up to it)
    assert rows[("meta", "population")] == 1_000_000
    assert rows[("given", "芳")] == 10_000
    assert rows[("given_py", "fang")] == 11_000  # 芳 and 方
    assert rows[("meta", "top_name_floor")] == 1_000  # 方, the rarest listed
    assert rows[("meta", "chars_per_given_name")] == 0.8


def test_the_written_table_reads_back_as_shares(tmp_path: Path) -> None:
    out = tmp_path / "freq.tsv"
    write(build(_source(tmp_path)), out)
    freq = load_frequencies(out)
    assert freq.surname_of("欧阳", None) == 0.3
    assert freq.surname_of(None, "wang") == 0.7
    assert freq.given_of("秀英", None) == 0.02
    assert freq.given_of(None, "xiuying") == 0.02
    assert freq.given_of(None, "nosuchname") is None
