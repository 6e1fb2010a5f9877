package bench

import (
	"fmt"
	"math"
	"slices"
)

// The machines the bench runs on are shared and noisy: two runs of the same
// thing differ by ±10% and more. So every figure is a median over several
// rounds, shown with its spread (min–max over the rounds), and every
// comparison is a ratio or difference taken per round (the rounds of the
// configurations are interleaved A B B A …) whose median is reported.

// Percentile returns the p-th percentile (0..100) of xs by linear
// interpolation between closest ranks; NaN for no data.
func Percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	c := slices.Clone(xs)
	slices.Sort(c)
	return sortedPercentile(c, p)
}

func sortedPercentile(c []float64, p float64) float64 {
	if len(c) == 1 {
		return c[0]
	}
	pos := p / 100 * float64(len(c)-1)
	i := int(math.Floor(pos))
	if i >= len(c)-1 {
		return c[len(c)-1]
	}
	f := pos - float64(i)
	return c[i] + f*(c[i+1]-c[i])
}

// PercentileNs is Percentile of nanosecond samples, in microseconds.
func PercentileNs(ns []int64, p float64) float64 {
	xs := make([]float64, len(ns))
	for i, v := range ns {
		xs[i] = float64(v) / 1e3
	}
	return Percentile(xs, p)
}

// Summary is the median and spread of per-round values.
type Summary struct {
	N                int
	Median, Min, Max float64
	Q1, Q3           float64
	Values           []float64 // in round order
}

// Summarize summarizes per-round values; NaNs (rounds without a value)
// are left out.
func Summarize(values []float64) Summary {
	s := Summary{Values: values}
	var c []float64
	for _, v := range values {
		if math.IsNaN(v) {
			continue
		}
		c = append(c, v)
	}
	s.N = len(c)
	if len(c) == 0 {
		s.Median, s.Min, s.Max, s.Q1, s.Q3 = math.NaN(), math.NaN(), math.NaN(), math.NaN(), math.NaN()
		return s
	}
	slices.Sort(c)
	s.Median = sortedPercentile(c, 50)
	s.Q1 = sortedPercentile(c, 25)
	s.Q3 = sortedPercentile(c, 75)
	s.Min, s.Max = c[0], c[len(c)-1]
	return s
}

// Ratios returns a[i]/b[i] per round.
func Ratios(a, b []float64) []float64 {
	n := min(len(a), len(b))
	out := make([]float64, n)
	for i := range n {
		out[i] = a[i] / b[i]
	}
	return out
}

// Diffs returns a[i]-b[i] per round.
func Diffs(a, b []float64) []float64 {
	n := min(len(a), len(b))
	out := make([]float64, n)
	for i := range n {
		out[i] = a[i] - b[i]
	}
	return out
}

// Fmt renders the summary as "median (min–max)" with the given decimals;
// one round shows only the value.
func (s Summary) Fmt(decimals int) string {
	if s.N == 0 {
		return "n/a"
	}
	f := func(v float64) string { return fmtNum(v, decimals) }
	if s.N == 1 || s.Min == s.Max {
		return f(s.Median)
	}
	return fmt.Sprintf("%s (%s–%s)", f(s.Median), f(s.Min), f(s.Max))
}

// FmtSigned is Fmt with an explicit sign on every number (differences).
func (s Summary) FmtSigned(decimals int) string {
	if s.N == 0 {
		return "n/a"
	}
	f := func(v float64) string {
		r := fmtNum(v, decimals)
		if v >= 0 {
			r = "+" + r
		}
		return r
	}
	if s.N == 1 || s.Min == s.Max {
		return f(s.Median)
	}
	return fmt.Sprintf("%s (%s … %s)", f(s.Median), f(s.Min), f(s.Max))
}

func fmtNum(v float64, decimals int) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	if math.Abs(v) >= 10000 && decimals == 0 {
		return groupThousands(int64(math.Round(v)))
	}
	return fmt.Sprintf("%.*f", decimals, v)
}

// groupThousands writes 1234567 as 1 234 567 (thin groups read well in
// tables and cannot be confused with a decimal point).
func groupThousands(v int64) string {
	neg := v < 0
	if neg {
		v = -v
	}
	s := fmt.Sprint(v)
	var out []byte
	for i, c := range []byte(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ' ')
		}
		out = append(out, c)
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}
