"""The report's inline stylesheet (system fonts only: nothing is fetched)."""

CSS = """
:root {
  --fg: #1f2933; --muted: #5f6b7a; --line: #d9e2ec; --panel: #f4f6f9;
  --accent: #1f5f8b; --head: #16324f;
  --ok: #17692f; --okbg: #dff3e5; --bad: #a4161a; --badbg: #fbe3e3;
  --na: #52606d; --nabg: #e9edf2;
}
* { box-sizing: border-box; }
body {
  margin: 0; color: var(--fg); background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    sans-serif;
}
header.top { background: var(--head); color: #fff; padding: 1.3rem 2rem 1.1rem; }
header.top h1 { margin: 0; font-size: 1.55rem; font-weight: 600; line-height: 1.25; }
header.top p { margin: .35rem 0 0; color: #c9dbee; font-size: .92rem; }
.layout { display: flex; align-items: flex-start; max-width: 1440px; margin: 0 auto; }
nav.toc {
  position: sticky; top: 0; flex: 0 0 240px; max-height: 100vh; overflow-y: auto;
  padding: 1.1rem 1rem 2rem 1.2rem; border-right: 1px solid var(--line); font-size: .9rem;
}
nav.toc h2 { font-size: .8rem; text-transform: uppercase; letter-spacing: .06em;
  color: var(--muted); margin: 0 0 .4rem; }
nav.toc ul { list-style: none; padding: 0; margin: 0; }
nav.toc li { display: flex; margin: .14rem 0; }
nav.toc .n { flex: 0 0 1.7rem; color: var(--muted); }
nav.toc a { color: var(--fg); text-decoration: none; }
nav.toc a:hover { color: var(--accent); text-decoration: underline; }
nav.toc .badge { font-size: .68rem; padding: 0 .4rem; margin-left: .25rem; }
main { flex: 1 1 auto; min-width: 0; padding: .6rem 2.2rem 4rem; }
section { border-bottom: 1px solid var(--line); padding: .9rem 0 1.6rem; }
section:last-child { border-bottom: 0; }
h2 { font-size: 1.35rem; margin: .6rem 0 .25rem; color: var(--head); }
h2 .step { color: var(--muted); font-weight: 400; margin-right: .35rem; }
h3 { font-size: 1.08rem; margin: 1.3rem 0 .4rem; color: var(--head); }
h4 { font-size: .98rem; margin: 1rem 0 .3rem; }
p.lead { color: var(--muted); margin: 0 0 .8rem; max-width: 62rem; }
a { color: var(--accent); }
.badge {
  display: inline-block; padding: .05rem .55rem; border-radius: .8rem; font-size: .76rem;
  font-weight: 600; vertical-align: middle; white-space: nowrap;
}
.badge.ok { color: var(--ok); background: var(--okbg); }
.badge.bad { color: var(--bad); background: var(--badbg); }
.badge.na { color: var(--na); background: var(--nabg); }
.summary { display: flex; flex-wrap: wrap; gap: .8rem; margin: .6rem 0 1rem; }
.card {
  flex: 0 1 auto; min-width: 9rem; padding: .55rem .9rem; border: 1px solid var(--line);
  border-radius: 8px; background: var(--panel);
}
.card .value { font-size: 1.35rem; font-weight: 600; color: var(--head); }
.card .label { font-size: .8rem; color: var(--muted); }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: .35rem 0 .9rem; font-size: .87rem; }
th, td {
  border-bottom: 1px solid var(--line); padding: .24rem .65rem; text-align: left;
  vertical-align: top;
}
th { background: var(--panel); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.key { white-space: nowrap; }
tr.dim td, tr.dim td .genes { color: #a3acb7; }
table.goals td, table.goals th { padding: .35rem .75rem; }
table.findings { font-size: .82rem; margin-top: 0; }
table.findings td { padding: .2rem .55rem; }
table.findings td.ct { min-width: 9rem; max-width: 13rem; }
table.findings td.ct .meta { color: var(--muted); font-size: .78rem; }
table.findings td.genes { min-width: 15rem; }
table.findings td.sets { min-width: 13rem; }
table.findings .none { color: var(--muted); }
table.findings span[title] { border-bottom: 1px dotted #a3acb7; }
.subtables { display: flex; flex-wrap: wrap; align-items: flex-start; gap: 0 2rem; }
.subtables > .sub { flex: 0 1 auto; min-width: 0; max-width: 100%; }
.figures {
  display: grid; grid-template-columns: repeat(auto-fill, minmax(400px, 1fr)); gap: 1.1rem;
  margin: .6rem 0 1rem;
}
figure {
  margin: 0; padding: .7rem; border: 1px solid var(--line); border-radius: 8px; background: #fff;
}
figure.wide { grid-column: 1 / -1; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figure.wide img { max-width: min(100%, 1100px); }
figcaption { font-size: .85rem; color: var(--muted); margin-top: .5rem; }
figcaption b { color: var(--fg); }
.pair {
  display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: 0 1.4rem;
}
.celltype { border-left: 3px solid var(--line); padding-left: .9rem; margin: 1rem 0 1.2rem; }
.celltype h4 { margin-top: .2rem; }
.celltype h5 { margin: .5rem 0 .1rem; font-size: .88rem; }
h5 { font-size: .9rem; margin: .8rem 0 .25rem; }
.celltype td:first-child { white-space: nowrap; }
.celltype td.genes { white-space: normal; }
.celltype .meta { color: var(--muted); font-size: .85rem; margin: 0 0 .3rem; }
details { margin: .5rem 0; }
summary { cursor: pointer; color: var(--accent); font-weight: 600; }
.note { white-space: pre-line; color: var(--muted); font-size: .84rem; }
code {
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
  font-size: .84em; background: var(--panel); padding: 0 .25rem; border-radius: 3px;
}
.hash { word-break: break-all; }
.genes { font-size: .8rem; color: var(--muted); }
.notrun {
  background: var(--nabg); padding: .6rem 1rem; border-radius: 6px; color: var(--muted);
}
.warning {
  border-left: 4px solid #b8860b; background: #fff8e1; padding: .5rem 1rem; margin: .5rem 0;
}
.chips { margin: .3rem 0 .6rem; }
.chips a {
  display: inline-block; margin: 0 .3rem .35rem 0; padding: .05rem .6rem;
  border: 1px solid var(--line); border-radius: .9rem; font-size: .8rem; text-decoration: none;
}
@media (max-width: 900px) {
  .layout { display: block; }
  nav.toc { position: static; max-height: none; border-right: 0;
    border-bottom: 1px solid var(--line); }
  main { padding: .6rem 1rem 3rem; }
  .figures { grid-template-columns: 1fr; }
}
@media print {
  nav.toc { display: none; }
  details { display: block; }
}
"""
