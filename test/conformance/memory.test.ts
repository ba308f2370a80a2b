import { memoryUnderTest } from '../transport-under-test.ts';
import { runConformance } from './suite.ts';

await runConformance(memoryUnderTest());
