/* SPDX-License-Identifier: MIT */
/*
 * tests/tools/powercut_journal.h - what the power-cut shim (writer) and the
 * rollback tool (reader) share of the journal's line format: names are
 * %-escaped so that a line splits on spaces.  Test-only.
 */
#ifndef BFS_POWERCUT_JOURNAL_H
#define BFS_POWERCUT_JOURNAL_H

#include <stddef.h>
#include <stdio.h>

/* %XX-escape bytes <= ' ', '%' and >= 0x7f of @s into @out (@n bytes). */
static inline void pcj_esc(char *out, size_t n, const char *s)
{
	size_t o = 0;

	for (; *s && o + 4 < n; s++) {
		unsigned char c = *s;

		if (c <= ' ' || c == '%' || c >= 0x7f)
			o += snprintf(out + o, n - o, "%%%02X", c);
		else
			out[o++] = c;
	}
	out[o] = '\0';
}

#endif /* BFS_POWERCUT_JOURNAL_H */
