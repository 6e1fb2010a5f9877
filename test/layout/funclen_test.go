// Package layout checks rules of the code's shape that review would
// otherwise have to: small functions in the daemon and its packages.
package layout

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// maxFuncLines is the longest a function in cmd/ or internal/ may be
// (tests and generated bindings aside): longer ones do more than one thing.
const maxFuncLines = 80

func TestNoFunctionIsLongerThanTheLimit(t *testing.T) {
	for _, root := range []string{"../../cmd", "../../internal"} {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			for name, n := range funcLengths(t, path) {
				if n > maxFuncLines {
					t.Errorf("%s: %s is %d lines, more than %d: split it", path, name, n, maxFuncLines)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// funcLengths maps each function (Recv.Name for methods) of a file to its
// length in lines, signature to closing brace.
func funcLengths(t *testing.T, path string) map[string]int {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, decl := range f.Decls {
		fd, ok := decl.(*ast.FuncDecl)
		if !ok || fd.Body == nil {
			continue
		}
		name := fd.Name.Name
		if fd.Recv != nil && len(fd.Recv.List) == 1 {
			if star, ok := fd.Recv.List[0].Type.(*ast.StarExpr); ok {
				if id, ok := star.X.(*ast.Ident); ok {
					name = id.Name + "." + name
				}
			} else if id, ok := fd.Recv.List[0].Type.(*ast.Ident); ok {
				name = id.Name + "." + name
			}
		}
		out[name] = fset.Position(fd.End()).Line - fset.Position(fd.Pos()).Line + 1
	}
	return out
}
