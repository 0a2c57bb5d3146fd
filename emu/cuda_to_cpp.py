#!/usr/bin/env python3
"""Rewrites CUDA C++ sources into C++ that g++ compiles against the emulation (emu/emu.h).

Only what C++ cannot express is rewritten, in place, keeping every line where it was (so __LINE__,
compiler errors and gdb point at the original source; each output starts with a #line naming it):
  kernel<<<grid, block, shared, stream>>>(args)
      -> ::emu::make_launcher("kernel", __FILE__, __LINE__, kernel, grid, block, shared, stream)(args)
  extern __shared__ T name[];       -> T* name = (T*)::emu::dynamic_shared();
  __shared__ T name[N];             -> static char key; auto& name = ::emu::shared_variable<T[N]>(&key, ...);
  __global__ ... __launch_bounds__(M, ...) f(...) {
                                    -> __global__ ... f(...) { EMU_KERNEL_ENTRY(M);
  (a kernel without __launch_bounds__ gets EMU_KERNEL_ENTRY(0)).
A function template kernel launched without template arguments (fill<<<g, b>>>(float_ptr, n)) goes
through a generic lambda, so that C++ deduces them from the arguments as nvcc does.
Everything else (__global__, __device__, intrinsics, <<<>>>-free code) is left to emu.h.

usage: cuda_to_cpp.py --out DIR FILE...   writes DIR/FILE for each FILE (unchanged files are copied),
rewriting a file only if its content changes (so make sees no new timestamp).
"""
import argparse
import os
import re
import sys


def mask_comments_and_strings(src):
    """src with comments and string/char literals blanked (same length, newlines kept)."""
    out = list(src)
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                out[k] = " "
            i = j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            for k in range(i, j):
                if out[k] != "\n":
                    out[k] = " "
            i = j
        elif c == '"' or c == "'":
            if c == '"' and i > 0 and src[i - 1] == "R":  # raw string R"(...)"
                end = src.find(")\"", i)
                j = n if end < 0 else end + 2
            else:
                j = i + 1
                while j < n and src[j] != c:
                    j += 2 if src[j] == "\\" else 1
                j += 1
            for k in range(i + 1, min(j, n) - 1):
                if out[k] != "\n":
                    out[k] = " "
            i = j
        else:
            i += 1
    return "".join(out)


def match_close(masked, i, open_c, close_c):
    """Index just past the bracket closing the one at masked[i]."""
    depth = 0
    for j in range(i, len(masked)):
        if masked[j] == open_c:
            depth += 1
        elif masked[j] == close_c:
            depth -= 1
            if depth == 0:
                return j + 1
    raise SyntaxError("unbalanced %s at offset %d" % (open_c, i))


class Rewriter:
    def __init__(self, src, path, template_kernels=frozenset()):
        self.src, self.path = src, path
        self.template_kernels = template_kernels
        self.masked = mask_comments_and_strings(src)
        self.edits = []  # (start, end, replacement)

    def error(self, pos, msg):
        line = self.src.count("\n", 0, pos) + 1
        sys.exit("cuda_to_cpp.py: %s:%d: %s" % (self.path, line, msg))

    def launches(self):
        for m in re.finditer(r"<<<", self.masked):
            start = m.start()
            # the kernel expression before <<<: name, ::, and balanced <...> template arguments
            j = start
            while j > 0 and self.masked[j - 1].isspace():
                j -= 1
            end_expr = j
            while j > 0:
                c = self.masked[j - 1]
                if c.isalnum() or c == "_" or c == ":":
                    j -= 1
                elif c == ">":
                    depth = 0
                    while j > 0:
                        c = self.masked[j - 1]
                        depth += c == ">"
                        depth -= c == "<"
                        j -= 1
                        if depth == 0:
                            break
                else:
                    break
            expr = re.sub(r"\s+", " ", self.src[j:end_expr]).strip()
            if not expr:
                self.error(start, "a launch without a kernel name before <<<")
            close = self.masked.find(">>>", start)
            if close < 0:
                self.error(start, "<<< without >>>")
            config = self.src[start + 3:close]
            if "<" not in expr and expr.split("::")[-1] in self.template_kernels:
                kernel = "[](auto&&... a) { %s(static_cast<decltype(a)&&>(a)...); }" % expr
            else:
                kernel = self.src[j:end_expr]
            text = '::emu::make_launcher("%s", __FILE__, __LINE__, %s, %s)' % (expr, kernel, config)
            self.edits.append((j, close + 3, text))

    def shared(self):
        for m in re.finditer(r"\b__shared__\b", self.masked):
            # the whole declaration: from its start (extern/static/__shared__) to its ';'
            semi = self.masked.find(";", m.end())
            decl_start = m.start()
            before = self.masked[:m.start()]
            ext = re.search(r"\b(extern|static)\s+$", before)
            if ext:
                decl_start = ext.start()
            is_extern = bool(ext) and ext.group(1) == "extern"
            rest = self.src[m.end():semi]
            align = None
            am = re.match(r"\s*__align__\s*\(\s*(\d+)\s*\)", rest)
            if am:
                align = am.group(1)
                rest = rest[am.end():]
            rest_after_extern = re.sub(r"^\s*(static\s+)?", "", rest)
            if "," in re.sub(r"\[[^\]]*\]|<[^>]*>|\([^)]*\)", "", rest_after_extern):
                self.error(m.start(), "one __shared__ variable per declaration, please")
            dm = re.match(r"(?s)\s*(.*?)\b([A-Za-z_]\w*)\s*((?:\[[^\]]*\]\s*)*)$", rest_after_extern)
            if not dm:
                self.error(m.start(), "cannot read this __shared__ declaration")
            type_, name, dims = dm.group(1).strip(), dm.group(2), re.sub(r"\s+", "", dm.group(3))
            newlines = "\n" * self.src.count("\n", decl_start, semi)
            if is_extern:
                if dims != "[]":
                    self.error(m.start(), "extern __shared__ must be an array of unknown size")
                text = "%s* %s = (%s*)::emu::dynamic_shared();%s" % (type_, name, type_, newlines)
            else:
                key = "emu_shared_key_%s" % name
                full = "%s%s" % (type_, dims)
                text = ('static char %s; auto& %s = ::emu::shared_variable<%s>(&%s, "%s", __FILE__, __LINE__%s);%s'
                        % (key, name, full, key, name, ", " + align if align else "", newlines))
            self.edits.append((decl_start, semi + 1, text))

    def template_kernel_names(self):
        """Names of the kernels declared as function templates in this file."""
        names = set()
        for m in re.finditer(r"\b__global__\b", self.masked):
            stmt_start = max(self.masked.rfind(c, 0, m.start()) for c in ";{}") + 1
            if not re.search(r"\btemplate\b", self.masked[stmt_start:m.start()]):
                continue
            depth, i = 0, m.end()
            while i < len(self.masked) and not (self.masked[i] == "(" and depth == 0 and
                                                re.search(r"\w\s*$", self.masked[m.end():i]) and
                                                not re.search(r"__launch_bounds__\s*$", self.masked[m.end():i])):
                if self.masked[i] == "(":
                    i = match_close(self.masked, i, "(", ")")
                    continue
                i += 1
            name = re.search(r"(\w+)\s*$", self.masked[m.end():i])
            if name:
                names.add(name.group(1))
        return names

    def kernels(self):
        for m in re.finditer(r"\b__global__\b", self.masked):
            paren = None
            bounds = None
            i = m.end()
            # up to the parameter list: skip __launch_bounds__(...) and find the first '(' after a name
            while i < len(self.masked):
                lb = re.match(r"\s*__launch_bounds__\s*\(", self.masked[i:])
                if lb:
                    open_at = i + lb.end() - 1
                    close_at = match_close(self.masked, open_at, "(", ")")
                    args = self.src[open_at + 1:close_at - 1]
                    depth, first = 0, ""
                    for c in args:
                        if c in "(<[":
                            depth += 1
                        elif c in ")>]":
                            depth -= 1
                        elif c == "," and depth == 0:
                            break
                        first += c
                    bounds = first.strip()
                    blank = re.sub(r"[^\n]", " ", self.src[i:close_at])
                    self.edits.append((i, close_at, blank))
                    i = close_at
                    continue
                if self.masked[i] == "(":
                    paren = i
                    break
                if self.masked[i] in ";{":
                    break
                i += 1
            if paren is None:
                continue
            after = match_close(self.masked, paren, "(", ")")
            k = after
            while k < len(self.masked) and self.masked[k] not in "{;":
                k += 1
            if k >= len(self.masked) or self.masked[k] == ";":
                continue  # a declaration
            self.edits.append((k + 1, k + 1, " EMU_KERNEL_ENTRY(%s);" % (bounds or "0")))

    def run(self):
        self.launches()
        self.shared()
        self.kernels()
        out, pos = [], 0
        for start, end, text in sorted(self.edits, key=lambda e: (e[0], e[1])):
            if start < pos:
                self.error(start, "overlapping rewrites")
            out.append(self.src[pos:start])
            out.append(text)
            pos = end
        out.append(self.src[pos:])
        return "".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    sources = {}
    for path in args.files:
        with open(path) as f:
            sources[path] = f.read()
    cuda = [p for p in args.files if p.endswith((".cu", ".cuh"))]
    template_kernels = frozenset().union(*[Rewriter(sources[p], p).template_kernel_names() for p in cuda])
    for path in args.files:
        src = sources[path]
        rewritten = Rewriter(src, path, template_kernels).run() if path in cuda else src
        text = '#line 1 "%s"\n%s' % (path, rewritten) if path.endswith((".cu", ".cuh")) else rewritten
        dest = os.path.join(args.out, path)
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        if os.path.exists(dest):
            with open(dest) as f:
                if f.read() == text:
                    continue
        with open(dest, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
