// Package nft manages imdsguard's nftables table, `inet imdsguard`: the
// defence in depth for packets that never pass a socket of the host (a pod
// crafting TCP on a raw socket, a VM, a macvlan container). Its forward
// chain drops, or rejects, packets routed to the IMDS endpoints unless their
// source is a pod a policy rule allows. It touches no other table: removing
// imdsguard removes exactly this one.
package nft

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TableName is the name of the table in family inet.
const TableName = "imdsguard"

// LogPrefix marks the table's log messages.
const LogPrefix = "imdsguard"

// Config is what the table enforces.
type Config struct {
	Endpoints []netip.AddrPort
	// Reject answers with a TCP reset instead of dropping silently.
	Reject bool
	// Audit only counts and logs: packets pass (policy mode audit).
	Audit bool
	// LogGroup is the NFLOG group dropped packets are logged to (rate
	// limited to LogRate per second), or 0 for no logging.
	LogGroup uint16
	LogRate  uint64
	// Allowed are source addresses whose packets pass: the addresses of
	// pods a rule with allowNonHostNetns matches.
	Allowed []netip.Addr
}

// Table is the imdsguard table in one network namespace.
type Table struct {
	netnsFd int // -1: the caller's namespace
}

// New manages the table in the network namespace open as netnsFd (-1 for
// the caller's own). The descriptor must stay open while the Table is used.
func New(netnsFd int) *Table { return &Table{netnsFd: netnsFd} }

func (t *Table) conn() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if t.netnsFd >= 0 {
		opts = append(opts, nftables.WithNetNSFd(t.netnsFd))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("opening nftables netlink: %w", err)
	}
	return c, nil
}

// Supported reports whether the kernel has nf_tables.
func (t *Table) Supported() error {
	c, err := t.conn()
	if err != nil {
		return err
	}
	if _, err := c.ListTablesOfFamily(nftables.TableFamilyINet); err != nil {
		return fmt.Errorf("listing nftables tables: %w", err)
	}
	return nil
}

// allowedSet is the set of allowed IPv4 (allowed4) or IPv6 (allowed6) sources.
func allowedSet(tbl *nftables.Table, v6 bool) *nftables.Set {
	if v6 {
		return &nftables.Set{Table: tbl, Name: "allowed6", KeyType: nftables.TypeIP6Addr}
	}
	return &nftables.Set{Table: tbl, Name: "allowed4", KeyType: nftables.TypeIPAddr}
}

// elements are the addresses of one family as set elements.
func elements(addrs []netip.Addr, v6 bool) []nftables.SetElement {
	var out []nftables.SetElement
	for _, a := range addrs {
		if a.Is6() == v6 {
			out = append(out, nftables.SetElement{Key: a.AsSlice()})
		}
	}
	return out
}

func table() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
}

func (t *Table) exists(c *nftables.Conn) (bool, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("listing tables: %w", err)
	}
	return slices.ContainsFunc(tables, func(x *nftables.Table) bool { return x.Name == TableName }), nil
}

// Apply creates the table, or replaces it, in one netlink batch: the kernel
// applies the batch atomically, so there is no moment without the table's
// rules and no moment with half of them.
func (t *Table) Apply(cfg Config) error {
	c, err := t.conn()
	if err != nil {
		return err
	}
	had, err := t.exists(c)
	if err != nil {
		return err
	}
	if had {
		c.DelTable(table())
	}
	tbl := c.AddTable(table())
	pol := nftables.ChainPolicyAccept
	chain := c.AddChain(&nftables.Chain{
		Name: "forward", Table: tbl, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &pol,
	})
	sets := map[bool]*nftables.Set{}
	for _, v6 := range []bool{false, true} {
		s := allowedSet(tbl, v6)
		if err := c.AddSet(s, elements(cfg.Allowed, v6)); err != nil {
			return fmt.Errorf("adding set %s: %w", s.Name, err)
		}
		sets[v6] = s
	}
	for _, ep := range cfg.Endpoints {
		for _, r := range endpointRules(tbl, chain, sets[!ep.Addr().Unmap().Is4()], ep, cfg) {
			c.AddRule(r)
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("writing table inet %s: %w", TableName, err)
	}
	return nil
}

// RulesPerEndpoint is how many rules Apply writes for each endpoint.
func RulesPerEndpoint(cfg Config) int {
	if cfg.LogGroup != 0 {
		return 3
	}
	return 2
}

// endpointRules: allowed sources accepted; others logged (rate limited)
// and dropped or rejected. Every rule counts.
func endpointRules(tbl *nftables.Table, chain *nftables.Chain, allowed *nftables.Set, ep netip.AddrPort, cfg Config) []*nftables.Rule {
	addr := ep.Addr().Unmap()
	match := func(saddr bool) []expr.Any {
		proto, daddrOff, saddrOff, n := byte(unix.NFPROTO_IPV4), uint32(16), uint32(12), uint32(4)
		if addr.Is6() {
			proto, daddrOff, saddrOff, n = unix.NFPROTO_IPV6, 24, 8, 16
		}
		e := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddrOff, Len: n},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr.AsSlice()},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(ep.Port())},
		}
		if saddr {
			e = append(e,
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: saddrOff, Len: n},
				&expr.Lookup{SourceRegister: 1, SetName: allowed.Name, SetID: allowed.ID},
			)
		}
		return e
	}
	rules := []*nftables.Rule{{
		Table: tbl, Chain: chain,
		Exprs: append(match(true), &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept}),
	}}
	if cfg.LogGroup != 0 {
		rate := cfg.LogRate
		if rate == 0 {
			rate = 10
		}
		rules = append(rules, &nftables.Rule{
			Table: tbl, Chain: chain,
			Exprs: append(match(false),
				&expr.Limit{Type: expr.LimitTypePkts, Rate: rate, Unit: expr.LimitTimeSecond, Burst: uint32(rate)},
				&expr.Counter{}, // packets logged
				&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: cfg.LogGroup, Data: []byte(LogPrefix)},
			),
		})
	}
	final := []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}
	switch {
	case cfg.Audit:
		final = []expr.Any{&expr.Counter{}} // counted, then the chain's accept
	case cfg.Reject:
		final = []expr.Any{&expr.Counter{}, &expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}
	}
	rules = append(rules, &nftables.Rule{Table: tbl, Chain: chain, Exprs: append(match(false), final...)})
	return rules
}

// Check reports whether the table is present with want rules in its chain
// (someone may have deleted or flushed it).
func (t *Table) Check(want int) (bool, error) {
	c, err := t.conn()
	if err != nil {
		return false, err
	}
	ok, err := t.exists(c)
	if err != nil || !ok {
		return false, err
	}
	rules, err := c.GetRules(table(), &nftables.Chain{Name: "forward", Table: table()})
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("listing rules: %w", err)
	}
	return len(rules) == want, nil
}

// SetAllowed replaces the allowed source addresses.
func (t *Table) SetAllowed(add, remove []netip.Addr) error {
	c, err := t.conn()
	if err != nil {
		return err
	}
	tbl := table()
	for _, v6 := range []bool{false, true} {
		s := allowedSet(tbl, v6)
		if e := elements(remove, v6); len(e) > 0 {
			if err := c.SetDeleteElements(s, e); err != nil {
				return fmt.Errorf("updating set %s: %w", s.Name, err)
			}
		}
		if e := elements(add, v6); len(e) > 0 {
			if err := c.SetAddElements(s, e); err != nil {
				return fmt.Errorf("updating set %s: %w", s.Name, err)
			}
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("updating allowed sources: %w", err)
	}
	return nil
}

// Exists reports whether the table is there.
func (t *Table) Exists() (bool, error) {
	c, err := t.conn()
	if err != nil {
		return false, err
	}
	return t.exists(c)
}

// Remove deletes the table (nothing else); a missing table is not an error.
func (t *Table) Remove() error {
	c, err := t.conn()
	if err != nil {
		return err
	}
	ok, err := t.exists(c)
	if err != nil || !ok {
		return err
	}
	c.DelTable(table())
	if err := c.Flush(); err != nil {
		return fmt.Errorf("deleting table inet %s: %w", TableName, err)
	}
	return nil
}
