package metrics

import (
	"bytes"
	"compress/gzip"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// The daemon's few metrics are written in Prometheus's text exposition
// format (version 0.0.4) by hand, byte for byte as promhttp wrote them: the
// Prometheus client library (client_golang, procfs, client_model, common
// and expvar) cost the binary 0.64 MB to serve seven families of constant
// metrics, and its registry, descriptors and per-scrape protobuf messages
// held memory the daemon does not need. Every Prometheus server, and any
// OpenMetrics scraper, reads this format.

// contentType is what promhttp sent for the text format.
const contentType = "text/plain; version=0.0.4; charset=utf-8"

// family is one metric family: its samples share a name, a help text, a
// type and the names of their labels.
type family struct {
	name, help, kind string // kind: "counter" or "gauge"
	labels           []string
	samples          []sample
}

// sample is one series of a family: its label values, in the order of
// family.labels, and its value.
type sample struct {
	values []string
	value  float64
}

func (f *family) add(value float64, labelValues ...string) {
	f.samples = append(f.samples, sample{values: labelValues, value: value})
}

// writeText writes the families in the order promhttp did (by name, and
// each family's samples by their label values), so scrapes compare
// line by line with older ones; a family without samples is left out.
func writeText(b *bytes.Buffer, families []*family) {
	slices.SortFunc(families, func(x, y *family) int { return strings.Compare(x.name, y.name) })
	for _, f := range families {
		if len(f.samples) == 0 {
			continue
		}
		slices.SortStableFunc(f.samples, func(x, y sample) int { return slices.Compare(x.values, y.values) })
		b.WriteString("# HELP " + f.name + " " + helpEscaper.Replace(f.help) + "\n")
		b.WriteString("# TYPE " + f.name + " " + f.kind + "\n")
		for _, s := range f.samples {
			b.WriteString(f.name)
			writeLabels(b, f.labels, s.values)
			b.WriteByte(' ')
			b.WriteString(formatValue(s.value))
			b.WriteByte('\n')
		}
	}
}

func writeLabels(b *bytes.Buffer, names, values []string) {
	if len(names) == 0 {
		return
	}
	b.WriteByte('{')
	for i, n := range names {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(n + `="` + labelEscaper.Replace(values[i]) + `"`)
	}
	b.WriteByte('}')
}

// The format's escapes: a help text escapes backslash and newline, a label
// value the double quote as well.
var (
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
)

// formatValue writes a value as the Prometheus client did ('g', shortest
// exact form; the format's spellings of the infinities).
func formatValue(v float64) string {
	switch {
	case math.IsInf(v, +1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// serveText answers a scrape, gzipped when the scraper accepts it (as
// Prometheus does, and as promhttp answered).
func serveText(w http.ResponseWriter, r *http.Request, families []*family) {
	var b bytes.Buffer
	writeText(&b, families)
	w.Header().Set("Content-Type", contentType)
	if !acceptsGzip(r.Header.Get("Accept-Encoding")) {
		w.Write(b.Bytes())
		return
	}
	w.Header().Set("Content-Encoding", "gzip")
	w.Header().Add("Vary", "Accept-Encoding")
	gz := gzip.NewWriter(w)
	gz.Write(b.Bytes())
	gz.Close()
}

// acceptsGzip reads an Accept-Encoding header: gzip (or *) listed without
// q=0.
func acceptsGzip(header string) bool {
	for part := range strings.SplitSeq(header, ",") {
		coding, params, _ := strings.Cut(part, ";")
		coding = strings.TrimSpace(coding)
		if coding != "gzip" && coding != "*" {
			continue
		}
		q, ok := strings.CutPrefix(strings.ReplaceAll(params, " ", ""), "q=")
		if !ok {
			return true
		}
		if f, err := strconv.ParseFloat(q, 64); err == nil && f > 0 {
			return true
		}
	}
	return false
}
