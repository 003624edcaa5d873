"""The report: the papermill runner (``runner``; ``lungseg report``) and whether a notebook must run
again (``freshness``), headless notebook execution (``execute``), HTML rendering (``render``) with
its generated front page (``front``), each notebook's closing discussion (``discussion``), figures
(``plots``), Markdown tables (``tables``), README blocks (``readme``), the slice viewer
(``viewer``), the cohort report (``cohort_report``), nbval's checked outputs (``checked``), the
released model (``release``) and the benchmarks users run (``bench``, ``bench_train``,
``bench_report``). Nothing imports this layer but the command line.
"""
