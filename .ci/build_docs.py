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

Formulas render offline (MathJax is copied into the site from the `jupyter-server-mathjax` package) and no page
loads a script or stylesheet from the network.
"""
import argparse, ast, configparser, html, importlib, importlib.resources, re, shutil, sys, time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
CFG = configparser.ConfigParser()
CFG.read(ROOT/'settings.ini')
SETTINGS = CFG['DEFAULT']
NBS = ROOT/SETTINGS['nbs_path']
README_NB = NBS/SETTINGS['readme_nb']
CHAPTER_RE = re.compile(r'^\d\d_.*\.ipynb$')          # the library chapters (experiment notebooks are not pages)
DIRECTIVE_RE = re.compile(r'^\s*#\s*\|\s*(\S+)(.*)$')
# Formulas render offline: MathJax 2 as the `jupyter-server-mathjax` package ships it is copied into the site, and
# the pages load it from there (nbconvert's default is a CDN). They load no other script: nbconvert's require.js
# tag (a CDN too) serves widget outputs, which the chapters do not store.
MATHJAX_DIR = 'mathjax'
MATHJAX_URL = f'{MATHJAX_DIR}/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe'


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


def doc_notebook(nb_path: Path):
    "The chapter as it is documented: hidden cells out, each exported definition followed by its API doc."
    nb = nbformat.read(nb_path, as_version=4)
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


def offline_page(body: str, exporter) -> str:
    "The page without nbconvert's require.js tag; fails if any script or stylesheet would still come from the web."
    tag = f'<script src="{exporter.require_js_url}"></script>'
    if tag not in body: raise SystemExit('nbconvert no longer writes its require.js tag as expected: update offline_page')
    body = body.replace(tag, '')
    remote = re.findall(r'<(?:script|link)\b[^>]*(?:src|href)="(?:https?:)?//[^"]+"', body)
    if remote: raise SystemExit(f'a page would load from the network: {remote[:3]}')
    return body


def build_site(out: Path, only: list[str] | None = None) -> list[Path]:
    "Write one HTML page per chapter and `index.html` (the front page) into `out`; the pages written."
    from nbconvert import HTMLExporter
    chapters = sorted(p for p in NBS.glob('*.ipynb') if CHAPTER_RE.match(p.name))
    if only: chapters = [p for p in chapters if any(p.stem.startswith(o) for o in only)]
    if only and not chapters: raise SystemExit(f'--only {only}: no chapter of {NBS} starts with that')
    notebooks = [(README_NB, 'index.html')] + [(p, f'{p.stem}.html') for p in chapters]
    docs = [(doc_notebook(p), f) for p, f in notebooks]
    pages = [(f, title_of(nb)) for nb, f in docs]
    exporter = HTMLExporter(template_name='lab', mathjax_url=MATHJAX_URL)
    out.mkdir(parents=True, exist_ok=True)
    copy_mathjax(out)
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
    args = p.parse_args(argv)
    text, readme = readme_text(), ROOT/'README.md'
    if args.only or args.out:     # a site elsewhere or a partial one (tests): the checkout's README.md stays as it is
        out = Path(args.out or ROOT/SETTINGS['doc_path'])
        pages = build_site(out, args.only)
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
    pages = build_site(out, args.only)
    print(f'[docs] {len(pages)} pages in {out} ({time.time() - t0:.0f}s); open {out/"index.html"}')
    return 0


if __name__ == '__main__': sys.exit(main())
