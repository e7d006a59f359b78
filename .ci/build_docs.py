"""Build the documentation site (`_docs/`) and `README.md` from the nbdev notebooks, offline.

`nbdev_docs` / `nbdev_readme` render through Quarto, and the `quarto-cli` package on PyPI is a source
distribution that downloads the Quarto binary from GitHub while it installs: it cannot be installed
offline. This builds the same content without it: one HTML page per chapter (its prose, code and saved
outputs, nbconvert's `lab` template), and after every `#| export` cell the API documentation of what it
defines, rendered by nbdev's own `show_doc` from the imported `transrec` module (signature, docstring,
parameter table). `nbs/index.ipynb` (the `readme_nb` of settings.ini) is the front page and, as
markdown, `README.md`. Where Quarto is installed, `nbdev_docs` builds the same site the nbdev way.

    python .ci/build_docs.py                  # README.md and the whole site under _docs/
    python .ci/build_docs.py --readme         # README.md only
    python .ci/build_docs.py --check-readme   # exit 1 if README.md is not what nbs/index.ipynb says
    python .ci/build_docs.py --only 06_model --out /tmp/site   # one chapter (and the front page)
    python .ci/build_docs.py --out /tmp/site  # the whole site elsewhere; README.md is left as it is
    python .ci/build_docs.py --no-execute     # quick: the chapters as stored (without outputs)

The chapters are stored without outputs. The build executes each one first, as `nbdev_test` does (execnb's
`CaptureShell`, in `nbs/`, cells flagged with settings.ini's `tst_flags` -- slow, cuda -- skipped), and the pages
show what the cells printed and displayed; a chapter that fails stops the build, naming the chapter and cell.
Formulas render offline (MathJax is copied into the site from the `jupyter-server-mathjax` package), plotly figures
draw with the `plotly.min.js` copied into the site from the `plotly` package, widgets show their text form, and no
page loads a script or stylesheet from the network.
"""
import argparse, ast, configparser, html, importlib, importlib.resources, os, re, shutil, sys, tempfile, time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
CFG = configparser.ConfigParser()
CFG.read(ROOT/'settings.ini')
SETTINGS = CFG['DEFAULT']
NBS = ROOT/SETTINGS['nbs_path']
README_NB = NBS/SETTINGS['readme_nb']
CHAPTER_RE = re.compile(r"^\d\d[a-z]?_.*\.ipynb$")          # the library chapters (experiment notebooks are not pages)
DIRECTIVE_RE = re.compile(r'^\s*#\s*\|\s*(\S+)(.*)$')
# Formulas render offline: MathJax 2 as the `jupyter-server-mathjax` package ships it is copied into the site, and
# the pages load it from there (nbconvert's default is a CDN). They load no other script: nbconvert's require.js
# tag (a CDN too) serves widget outputs, which the chapters do not store.
MATHJAX_DIR = 'mathjax'
MATHJAX_URL = f'{MATHJAX_DIR}/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe'
SKIP_FLAGS = set(SETTINGS.get('tst_flags', '').split())   # cells nbdev_test skips (slow, cuda): not run for the site
PLOTLY_JS = 'plotly.min.js'                               # copied into the site: figures draw with no network
PLOTLY_MIME, WIDGET_MIME = 'application/vnd.plotly.v1+json', 'application/vnd.jupyter.widget-view+json'


def directives(source: str) -> dict:
    "The nbdev directives of a cell (`#| export`, `#| hide`, `#| default_exp model`) as {name: argument}."
    found = {}
    for line in source.splitlines():
        m = DIRECTIVE_RE.match(line)
        if not m: break
        found[m.group(1)] = m.group(2).strip()
    return found


def readme_text(nb_path: Path = README_NB) -> str:
    "README.md's text: the markdown cells of the front-page notebook, in order."
    nb = nbformat.read(nb_path, as_version=4)
    cells = [c.source.strip() for c in nb.cells if c.cell_type == 'markdown' and 'hide' not in directives(c.source)]
    return '\n\n'.join(cells) + '\n'


def public_names(source: str) -> list[str]:
    "Names of the public functions and classes an exported cell defines (in order)."
    try: tree = ast.parse(source)
    except SyntaxError: return []
    return [n.name for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not n.name.startswith('_')]


def api_markdown(module, name: str) -> str:
    "nbdev's `show_doc` of `module.name` as markdown (what nbdev_docs shows under an exported definition)."
    from nbdev.showdoc import show_doc
    obj = getattr(module, name, None)
    if obj is None: return ''
    doc = show_doc(obj, title_level=3)
    return doc._repr_markdown_() if doc is not None else ''


def skipped_cell(cell) -> bool:
    "Whether the build leaves `cell` unexecuted: what nbdev_test skips (markdown, flagged, `#| eval: false`)."
    if cell.cell_type != 'code' or 'nbdev_export(' in cell.source: return True
    found = getattr(cell, 'directives_', {}) or {}
    if found.get('eval:', [''])[0].lower() == 'false': return True
    return bool(SKIP_FLAGS & found.keys())


def execute_chapter(nb_path: Path) -> dict:
    "Run the chapter as nbdev_test does (in its folder, flagged cells skipped): {cell id: its outputs}."
    from execnb.shell import CaptureShell
    from fastcore.xtras import working_directory
    from nbdev.frontmatter import FrontmatterProc
    from nbdev.process import NBProcessor
    nb = NBProcessor(nb_path, procs=FrontmatterProc, process=True).nb
    shell = CaptureShell(nb_path)
    with working_directory(nb_path.parent):
        try: shell.run_all(nb, exc_stop=True, preproc=skipped_cell)
        except Exception:
            sys.stderr.write(shell.prettytb(fname=nb_path) + '\n')
            raise SystemExit(f'{nb_path.name} failed while executed for the site (the error is above); '
                             'fix the chapter, or build with --no-execute') from None
    return {cell.id: cell.outputs for cell in nb.cells if cell.cell_type == 'code' and cell.get('outputs')}


def static_outputs(outputs: list) -> list:
    """Outputs as a page shows them without a kernel: plotly figures as HTML drawing with the site's copy of
    plotly.js (plotly's own notebook output loads it through require.js, which the pages do not have), widgets
    as their text form, plotly's injected library dropped."""
    import plotly.io as pio
    joined = lambda value: ''.join(value) if isinstance(value, list) else value   # execnb keeps text as lines
    shown = []
    for output in (nbformat.from_dict(o) for o in outputs):
        if 'text' in output: output.text = joined(output.text)
        data = output.get('data', {})
        for mime in data: data[mime] = joined(data[mime])
        html_text = data.get('text/html', '')
        if 'window.PlotlyConfig' in html_text and PLOTLY_MIME not in data: continue   # plotly.js for a kernel
        if 'data' in output and not data: continue                  # a result with nothing to show (plotly's)
        if PLOTLY_MIME in data:
            figure = pio.to_html(dict(data[PLOTLY_MIME]), include_plotlyjs=False, full_html=False, validate=False)
            output.data = nbformat.from_dict({'text/html': figure})
        elif WIDGET_MIME in data:
            output.data = nbformat.from_dict({k: v for k, v in data.items() if k != WIDGET_MIME})
        shown.append(output)
    return shown


def doc_notebook(nb_path: Path, outputs: dict | None = None):
    """The chapter as it is documented: hidden cells out, each exported definition followed by its API doc;
    `outputs` ({cell id: outputs}, from `execute_chapter`) shown under their cells."""
    nb = nbformat.read(nb_path, as_version=4)
    for c in nb.cells:
        if c.cell_type == 'code' and outputs and c.get('id') in outputs: c.outputs = static_outputs(outputs[c.id])
    module = None
    for c in nb.cells:
        exp = directives(c.source).get('default_exp') if c.cell_type == 'code' else None
        if exp: module = importlib.import_module(f"{SETTINGS['lib_name']}.{exp}")
    cells = []
    for c in nb.cells:
        d = directives(c.source) if c.cell_type == 'code' else {}
        if 'hide' in d or 'default_exp' in d: continue
        c.source = '\n'.join(l for l in c.source.splitlines() if not DIRECTIVE_RE.match(l)) if d else c.source
        cells.append(c)
        if module is not None and ('export' in d or 'exports' in d):
            cells += [nbformat.v4.new_markdown_cell(md) for md in (api_markdown(module, n) for n in public_names(c.source))
                      if md]
    nb.cells = cells
    return nb


def title_of(nb) -> str:
    "The chapter's `# Title`."
    for c in nb.cells:
        if c.cell_type == 'markdown':
            m = re.match(r'#\s+(.+)', c.source.strip())
            if m: return m.group(1).strip()
    return 'untitled'


def nav_html(pages: list[tuple[str, str]], current: str) -> str:
    "The site's navigation bar: the site's title (a link to the front page), then every chapter, each title once."
    links = ' · '.join(f'<a href="{f}"{" class=current" if f == current else ""}>{html.escape(t)}</a>'
                       for f, t in pages if f != 'index.html')
    return (f'<nav class="trx-docs-nav" style="font:14px sans-serif;padding:8px 16px;border-bottom:1px solid #ddd">'
            f'<a href="index.html"><b>{html.escape(SETTINGS["title"])}</b></a> · {links}</nav>')


def copy_mathjax(out: Path) -> Path:
    "MathJax's files (from the `jupyter-server-mathjax` package) into the site, so formulas render with no network."
    source = importlib.resources.files('jupyter_server_mathjax')/'static'
    return Path(shutil.copytree(source, out/MATHJAX_DIR, dirs_exist_ok=True))


def copy_plotly(out: Path) -> Path:
    "plotly.js (from the `plotly` package) into the site, for the figures of executed chapters."
    source = importlib.resources.files('plotly')/'package_data'/PLOTLY_JS
    return Path(shutil.copyfile(source, out/PLOTLY_JS))


def offline_page(body: str, exporter) -> str:
    """The page without nbconvert's require.js tag (and with the site's plotly.js where it draws a figure); fails if
    any script or stylesheet would still come from the web."""
    tag = f'<script src="{exporter.require_js_url}"></script>'
    if tag not in body: raise SystemExit('nbconvert no longer writes its require.js tag as expected: update offline_page')
    body = body.replace(tag, f'<script src="{PLOTLY_JS}"></script>' if 'Plotly.newPlot' in body else '')
    remote = re.findall(r'<(?:script|link)\b[^>]*(?:src|href)="(?:https?:)?//[^"]+"', body)
    if remote: raise SystemExit(f'a page would load from the network: {remote[:3]}')
    return body


def executed_outputs(chapters: list[Path]) -> dict:
    """{chapter: {cell id: outputs}}: every chapter executed in turn, with `TMPDIR` a scratch folder that goes at the
    end (the chapters write data sets and checkpoints there)."""
    found, saved = {}, {name: os.environ.get(name) for name in ('TMPDIR', 'IN_TEST')}
    with tempfile.TemporaryDirectory(prefix='transrec-docs-') as scratch:
        os.environ.update(TMPDIR=scratch, IN_TEST='1')
        tempfile.tempdir = None                                     # re-read TMPDIR
        try:
            for chapter in chapters:
                t0 = time.time()
                found[chapter] = execute_chapter(chapter)
                print(f'[docs] executed {chapter.name} in {time.time() - t0:.0f}s', flush=True)
        finally:
            for name, value in saved.items():
                if value is None: os.environ.pop(name, None)
                else: os.environ[name] = value
            tempfile.tempdir = None
    return found


def build_site(out: Path, only: list[str] | None = None, execute: bool = True) -> list[Path]:
    """Write one HTML page per chapter and `index.html` (the front page) into `out`, the chapters executed first
    (`execute`) so the pages show their outputs; the pages written."""
    from nbconvert import HTMLExporter
    chapters = sorted(p for p in NBS.glob('*.ipynb') if CHAPTER_RE.match(p.name))
    if only: chapters = [p for p in chapters if any(p.stem.startswith(o) for o in only)]
    if only and not chapters: raise SystemExit(f'--only {only}: no chapter of {NBS} starts with that')
    notebooks = [(README_NB, 'index.html')] + [(p, f'{p.stem}.html') for p in chapters]
    outputs = executed_outputs(chapters) if execute else {}
    docs = [(doc_notebook(p, outputs.get(p)), f) for p, f in notebooks]
    pages = [(f, title_of(nb)) for nb, f in docs]
    exporter = HTMLExporter(template_name='lab', mathjax_url=MATHJAX_URL)
    out.mkdir(parents=True, exist_ok=True)
    copy_mathjax(out)
    copy_plotly(out)
    written = []
    for nb, f in docs:
        body, _ = exporter.from_notebook_node(nb, resources={'metadata': {'name': f'{title_of(nb)} – {SETTINGS["title"]}'}})
        body = re.sub(r'(<body[^>]*>)', lambda m: m.group(1) + nav_html(pages, f), body, count=1)
        body = offline_page(body, exporter)
        (out/f).write_text(body)
        written.append(out/f)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='.ci/build_docs.py', description=__doc__.split('\n\n')[0])
    p.add_argument('--readme', action='store_true', help='write README.md only')
    p.add_argument('--check-readme', action='store_true', help='fail if README.md differs from nbs/index.ipynb')
    p.add_argument('--only', nargs='+', default=None, help='chapters whose file name starts with these (e.g. 06_model)')
    p.add_argument('--out', default=None, help='site folder (default: _docs); with --out, README.md is not rewritten')
    p.add_argument('--no-execute', action='store_true',
                   help='do not execute the chapters: quick, pages without outputs (as the notebooks are stored)')
    args = p.parse_args(argv)
    text, readme = readme_text(), ROOT/'README.md'
    if args.only or args.out:     # a site elsewhere or a partial one (tests): the checkout's README.md stays as it is
        out = Path(args.out or ROOT/SETTINGS['doc_path'])
        pages = build_site(out, args.only, execute=not args.no_execute)
        print(f'[docs] {len(pages)} pages in {out}')
        return 0
    if args.check_readme:
        if readme.read_text() != text:
            print(f'README.md is not what {README_NB.relative_to(ROOT)} says: edit the notebook, then run '
                  'python .ci/build_docs.py --readme and commit both', file=sys.stderr)
            return 1
        return 0
    readme.write_text(text)
    if args.readme: return 0
    t0 = time.time()
    out = ROOT/SETTINGS['doc_path']
    pages = build_site(out, args.only, execute=not args.no_execute)
    print(f'[docs] {len(pages)} pages in {out} ({time.time() - t0:.0f}s); open {out/"index.html"}')
    return 0


if __name__ == '__main__': sys.exit(main())
