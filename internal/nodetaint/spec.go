package nodetaint

import (
	"errors"
	"fmt"
	"strings"
)

// Spec names the taints to remove: every taint with Key, and, when Effect
// is not empty, that effect only.
type Spec struct {
	Key    string
	Effect string
}

// The effects the API server accepts on a node taint.
const (
	EffectNoSchedule       = "NoSchedule"
	EffectPreferNoSchedule = "PreferNoSchedule"
	EffectNoExecute        = "NoExecute"
)

// ParseSpec reads "KEY" or "KEY:EFFECT", the syntax of kubectl taint's
// removal form without the trailing "-". A "=VALUE" part is refused rather
// than ignored: taints are matched by key and effect only, so a value would
// suggest a precision the removal does not have.
func ParseSpec(s string) (Spec, error) {
	if s == "" {
		return Spec{}, errors.New("taint: empty (want KEY or KEY:EFFECT)")
	}
	key, effect, hasEffect := strings.Cut(s, ":")
	if hasEffect {
		switch effect {
		case EffectNoSchedule, EffectPreferNoSchedule, EffectNoExecute:
		case "":
			return Spec{}, fmt.Errorf("taint %q: empty effect after \":\" (want %s, %s or %s)", s, EffectNoSchedule, EffectPreferNoSchedule, EffectNoExecute)
		default:
			return Spec{}, fmt.Errorf("taint %q: unknown effect %q (want %s, %s or %s)", s, effect, EffectNoSchedule, EffectPreferNoSchedule, EffectNoExecute)
		}
	}
	if strings.Contains(key, "=") {
		return Spec{}, fmt.Errorf("taint %q: a value (\"=VALUE\") is not matched; give KEY or KEY:EFFECT", s)
	}
	if err := validKey(key); err != nil {
		return Spec{}, fmt.Errorf("taint %q: %w", s, err)
	}
	return Spec{Key: key, Effect: effect}, nil
}

// String renders the spec in the syntax ParseSpec reads.
func (s Spec) String() string {
	if s.Effect == "" {
		return s.Key
	}
	return s.Key + ":" + s.Effect
}

func (s Spec) matches(t taint) bool {
	return t.Key == s.Key && (s.Effect == "" || t.Effect == s.Effect)
}

// validKey applies the API server's rule for taint keys (a qualified name:
// an optional DNS subdomain prefix and "/", then a name of at most 63
// characters), so that a typo fails at start instead of silently matching
// nothing on every node.
func validKey(key string) error {
	if key == "" {
		return errors.New("empty key")
	}
	prefix, name, hasPrefix := strings.Cut(key, "/")
	if !hasPrefix {
		name, prefix = prefix, ""
	} else {
		if strings.Contains(name, "/") {
			return errors.New("key has more than one \"/\"")
		}
		if err := validSubdomain(prefix); err != nil {
			return fmt.Errorf("key prefix %q: %w", prefix, err)
		}
	}
	if name == "" {
		return errors.New("key has an empty name")
	}
	if len(name) > 63 {
		return errors.New("key name is longer than 63 characters")
	}
	if !alnum(name[0]) || !alnum(name[len(name)-1]) {
		return errors.New("key name must start and end with a letter or digit")
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !alnum(c) && c != '-' && c != '_' && c != '.' {
			return errors.New("key name may hold only letters, digits, '-', '_' and '.'")
		}
	}
	return nil
}

func validSubdomain(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	if len(s) > 253 {
		return errors.New("longer than 253 characters")
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 {
			return errors.New("not a DNS subdomain (labels of 1 to 63 characters)")
		}
		if !lowerAlnum(label[0]) || !lowerAlnum(label[len(label)-1]) {
			return errors.New("not a DNS subdomain (labels start and end with a lower-case letter or digit)")
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !lowerAlnum(c) && c != '-' {
				return errors.New("not a DNS subdomain (lower-case letters, digits and '-')")
			}
		}
	}
	return nil
}

func alnum(c byte) bool {
	return lowerAlnum(c) || 'A' <= c && c <= 'Z'
}

func lowerAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || '0' <= c && c <= '9'
}
