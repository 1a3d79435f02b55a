"""The data every evaluation protocol reads, named once (the packs' own splits are used).

`medxpert eval retrieval` reads the sources it is given (default: the shared packs); these are
the protocols whose sets are fixed by what they measure."""

CONTEXT_SOURCE = "covid_cxr"  # the one pack whose cases have clinical notes
BLEND_TEST_SOURCES = ("nih_cxr14", "covid_cxr")  # labelled test X-rays; val: the library's own
FUSION_SOURCES = ("iu_xray", "nih_cxr14")  # labelled X-rays, one query per study
REPORT_PROTOCOLS = ("iu", "r2gen")
# per report protocol: the paired source (train: the random-report baseline's pool; val: the
# studies that choose the thresholds; test: the queries), and a second test set of X-rays
REPORT_SOURCE = {"iu": "iu_xray", "r2gen": "iu_xray_r2gen"}
REPORT_EXTRA_TEST = {"iu": "covid_cxr", "r2gen": None}
