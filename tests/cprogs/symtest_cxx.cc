// C++ test program for tests/test_symbols.py: a method whose symbol is mangled.
#include <cstdio>
#include <unistd.h>

namespace symtest {
struct Widget {
	__attribute__((noinline)) int spin(int n);
};

int Widget::spin(int n)
{
	return n * 5 + 3;
}
} // namespace symtest

int main()
{
	char c;
	symtest::Widget w;
	int (symtest::Widget::*pm)(int) = &symtest::Widget::spin;
	// a non-virtual member pointer holds the function address in its first word
	void *addr;
	static_assert(sizeof(pm) >= sizeof(addr), "member pointer layout");
	__builtin_memcpy(&addr, &pm, sizeof(addr));
	std::printf("symtest::Widget::spin %p\n", addr);
	std::printf("ready %d\n", w.spin(2));
	std::fflush(stdout);
	while (read(0, &c, 1) > 0)
		;
	return 0;
}
